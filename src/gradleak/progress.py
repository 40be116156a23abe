"""Progress bars that suit their output: a live bar on a terminal, a plain line every few
seconds when stderr is a log file or a pipe (a redrawn bar there floods the log with ``\\r``).

Use ``from gradleak.progress import tqdm`` as a drop-in for ``tqdm.auto.tqdm``.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm as _auto
from tqdm.std import tqdm as _std

LOG_INTERVAL = 5.0  # seconds between lines when the output is not a terminal


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class LogFriendlyTqdm(_std):
    """``tqdm`` that, off a terminal, writes one complete line per update (at most every
    :data:`LOG_INTERVAL` seconds) plus a final line, instead of redrawing with carriage returns."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        stream = kwargs.get("file") or sys.stderr
        self._log_lines = not _is_terminal(stream)
        if self._log_lines:
            kwargs["mininterval"] = max(float(kwargs.get("mininterval") or 0), LOG_INTERVAL)
            kwargs["maxinterval"] = max(float(kwargs.get("maxinterval") or 0), LOG_INTERVAL)
            kwargs.setdefault("ncols", 100)
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if not self._log_lines:
            return super().display(msg, pos)
        if msg == "":  # tqdm clears a bar by writing an empty one: nothing to clear in a log
            return True
        self.fp.write((self.__str__() if msg is None else msg).strip() + "\n")
        self.fp.flush()
        return True

    def close(self) -> None:
        if getattr(self, "_log_lines", False) and not self.disable:
            self.display()  # the final state, as one line
            self.disable = True
            self._decr_instances(self)
            return
        super().close()


# In a notebook keep tqdm's widget; everywhere else the log-friendly bar. (Outside a notebook
# tqdm.auto is tqdm.asyncio's subclass of the plain bar, not the plain bar itself.)
tqdm = _auto if _auto.__module__.startswith("tqdm.notebook") else LogFriendlyTqdm
