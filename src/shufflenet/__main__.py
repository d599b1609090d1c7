"""``python -m shufflenet ...`` (also what ``torchrun -m shufflenet`` runs)."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
