"""dualsparse.sparsity."""
