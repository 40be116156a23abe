"""The one exception users see: a clear, one-line message about bad input."""


class GradleakError(ValueError):
    """Bad configuration, bad input or missing data; the CLI prints it as one line and exits 2."""
