"""The RLVR trainer: the Lightning module, distributed statistics, the prompt sampler, the run directory and run_training."""
