"""``python -m tl_culture`` runs the command line (also under ``torchrun``)."""

import sys

from tl_culture.cli import main

if __name__ == "__main__":
    sys.exit(main())
