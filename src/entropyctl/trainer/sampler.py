"""Which prompts each step trains on: drawn reproducibly from ``(seed, rank, step, attempt)``."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["PromptSampler", "derive_seed"]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across processes and Python runs)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


class PromptSampler:
    """Draws each step's prompts reproducibly from ``(seed, rank, step, attempt)`` — no hidden stream
    state, so a resumed run draws exactly what the uninterrupted run drew.

    ``draw(count, seed)`` is the problem source: e.g. ``SyntheticArithmetic.sample`` (training split only),
    or a uniform choice from a dataset's rows.
    """

    def __init__(self, draw: Callable[[int, int], list[Any]], levels: Sequence[int], seed: int) -> None:
        self._draw = draw
        self.levels = sorted({int(level) for level in levels}) or [0]
        self.seed = int(seed)
        self.draws = 0  # prompt batches drawn so far (for the checkpoint; not needed to reproduce)

    def sample(self, count: int, *, step: int, rank: int, attempt: int = 0) -> list[Any]:
        self.draws += 1
        problems = self._draw(count, derive_seed("prompts", self.seed, rank, step, attempt))
        for problem in problems:
            if int(getattr(problem, "level", 0)) not in self.levels:
                raise ValueError(f"problem {problem!r} has level {problem.level}, not one of {self.levels}")
        return problems

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "draws": self.draws}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(
                f"checkpoint's prompt seed {state['seed']} differs from this run's seed {self.seed}"
            )
        self.draws = int(state["draws"])

    @staticmethod
    def from_list(problems: Sequence[Any], seed: int) -> PromptSampler:
        """Uniform draws (without replacement within a batch when possible) from a list of problems."""
        pool = list(problems)
        if not pool:
            raise ValueError("the training set is empty")

        def draw(count: int, draw_seed: int) -> list[Any]:
            rng = random.Random(draw_seed)
            if count <= len(pool):
                return rng.sample(pool, count)
            return [rng.choice(pool) for _ in range(count)]

        return PromptSampler(draw, [int(getattr(p, "level", 0)) for p in pool], seed)
