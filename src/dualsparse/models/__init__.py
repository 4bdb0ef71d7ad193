"""dualsparse.models."""
