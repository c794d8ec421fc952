"""``python -m convgrad``: the same as the ``convgrad`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
