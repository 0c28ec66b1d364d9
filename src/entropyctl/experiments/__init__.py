"""Experiments over many runs: ablations (arms x seeds) and their reports."""
