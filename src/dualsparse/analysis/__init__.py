"""dualsparse.analysis."""
