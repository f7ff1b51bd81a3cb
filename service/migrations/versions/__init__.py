"""Migration scripts, one per schema change, in revision order (0001, 0002, ...)."""
