"""dualsparse.embedded."""
