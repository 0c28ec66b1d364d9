"""Rollout engines: the protocol the trainer samples through, the Hugging Face engine and the vLLM engine."""
