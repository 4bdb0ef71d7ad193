"""dualsparse.engine."""
