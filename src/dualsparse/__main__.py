"""``python -m dualsparse ...`` runs the ``dualsparse`` command (also under ``torchrun``)."""

import sys

from dualsparse.cli import main

if __name__ == "__main__":
    sys.exit(main())
