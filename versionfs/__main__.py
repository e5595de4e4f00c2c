"""``python -m versionfs`` is the ``versionfs`` command."""

import sys

from versionfs.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
