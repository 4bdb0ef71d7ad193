"""dualsparse: recurrent networks sparse in activity and in weights."""

__version__ = "0.1.0"
