"""A custom verifier for `reward.name: examples.own_data.reward:near_miss` (see docs/data.md).

A reward function takes the completion's text and the row's gold answer (both strings) and returns a
float. 1.0 or more is a solve: the group accuracy the controller sees, `accuracy` in metrics.csv and
pass@k count only completions scored so; anything below is partial credit that reaches the advantages
(`reward` in metrics.csv) but not those counts.

`has_number` is a shaping reward (`reward.shaping: [{name: "examples.own_data.reward:has_number",
weight: 0.1}]`): added, weighted, to the verifier's reward for the advantages, never a solve.
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\d+")


def near_miss(completion: str, answer: str) -> float:
    """1.0 for the right number, 0.5 for one that is off by one, 0.0 otherwise (or with no number)."""
    numbers = _NUMBER.findall(completion)
    if not numbers:
        return 0.0
    guess, gold = int(numbers[-1]), int(answer)
    if guess == gold:
        return 1.0
    return 0.5 if abs(guess - gold) == 1 else 0.0


def has_number(completion: str, answer: str) -> float:
    """A format reward: 1.0 when the completion holds a number at all, else 0.0 (the answer is not read)."""
    return 1.0 if _NUMBER.search(completion) else 0.0
