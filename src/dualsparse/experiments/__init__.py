"""dualsparse.experiments."""
