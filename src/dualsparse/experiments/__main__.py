"""``python -m dualsparse.experiments {sweep,report} ...`` (see :mod:`.cli`)."""

import sys

from dualsparse.experiments.cli import main

if __name__ == "__main__":
    sys.exit(main())
