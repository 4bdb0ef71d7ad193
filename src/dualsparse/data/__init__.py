"""dualsparse.data."""
