"""dualsparse.rtrl."""
