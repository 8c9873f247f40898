"""``python -m pymusepipe ...``: the same as the ``pymusepipe`` console script (for environments where the
script is not on ``PATH``, e.g. a virtual environment that is not activated)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
