"""Adapters to other training frameworks, written over the public API (``entropyctl``): ``trl`` puts any
controller inside TRL's ``GRPOTrainer``."""
