"""The code version recorded in checkpoints and results (the ``core`` layer)."""

__version__ = "0.1.0"
