"""dualsparse.train."""
