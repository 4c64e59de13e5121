"""Multi-GPU inference: CFG parallelism (`cfg`)."""
