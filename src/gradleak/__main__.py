"""``python -m gradleak``: the same command line as the ``gradleak`` script."""

import sys

from gradleak.cli import main

if __name__ == "__main__":
    sys.exit(main())
