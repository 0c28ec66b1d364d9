"""Training data: the synthetic graded arithmetic task and loaders for math datasets."""

from entropyctl.data.loaders import DatasetError, load_math_dataset
from entropyctl.data.synthetic import ALPHABET, LEVEL_NAMES, Problem, SyntheticArithmetic
from entropyctl.data.templates import apply_chat_template, format_prompt

__all__ = [
    "ALPHABET",
    "LEVEL_NAMES",
    "DatasetError",
    "Problem",
    "SyntheticArithmetic",
    "apply_chat_template",
    "format_prompt",
    "load_math_dataset",
]
