"""Which prompts each step trains on: drawn reproducibly from ``(seed, rank, step, attempt)``, or read off
a seeded shuffle of the rows per epoch (``data.order: epochs``)."""

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

    ``epochs`` (a list of problems, :meth:`from_list` with ``order="epochs"``): a step's first draw is read
    off the rows in a shuffled order, a fresh shuffle (seeded by ``seed`` and the epoch) each pass, every
    row once per epoch; step ``s`` of rank ``r`` of ``world`` takes positions ``((s − 1)·world + r)·count``
    onwards of that endless sequence, so ranks take disjoint positions and a resumed run reads the same
    rows (a step that straddles two epochs may hold a row of each pass twice, on one rank or two).
    Refills (dynamic sampling's later attempts) are drawn at random.
    """

    def __init__(
        self,
        draw: Callable[[int, int], list[Any]],
        levels: Sequence[int],
        seed: int,
        epochs: Sequence[Any] | None = None,
    ) -> None:
        self._draw = draw
        self.levels = sorted({int(level) for level in levels}) or [0]
        self.seed = int(seed)
        self.draws = 0  # prompt batches drawn so far (for the checkpoint; not needed to reproduce)
        self._epochs = None if epochs is None else list(epochs)
        self._order: tuple[int, list[int]] = (-1, [])  # the last epoch's shuffle, cached

    def _epoch_row(self, position: int) -> Any:
        assert self._epochs is not None
        epoch, index = divmod(position, len(self._epochs))
        if self._order[0] != epoch:
            order = list(range(len(self._epochs)))
            random.Random(derive_seed("epoch", self.seed, epoch)).shuffle(order)
            self._order = (epoch, order)
        return self._epochs[self._order[1][index]]

    def epoch_of(self, step: int, count: int, world: int = 1) -> float:
        """The epochs (fractional) read by the end of ``step``, ``count`` prompts per rank a step."""
        return float("nan") if self._epochs is None else step * world * count / len(self._epochs)

    def sample(self, count: int, *, step: int, rank: int, attempt: int = 0, world: int = 1) -> list[Any]:
        self.draws += 1
        if self._epochs is not None and attempt == 0:
            start = ((step - 1) * world + rank) * count
            problems = [self._epoch_row(start + i) for i in range(count)]
        else:
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
    def from_list(problems: Sequence[Any], seed: int, order: str = "random") -> PromptSampler:
        """Uniform draws (without replacement within a batch when possible) from a list of problems; with
        ``order="epochs"``, passes over the list in a fresh shuffle each epoch (refills drawn uniformly)."""
        if order not in ("random", "epochs"):
            raise ValueError(f"order must be 'random' or 'epochs', got {order!r}")
        pool = list(problems)
        if not pool:
            raise ValueError("the training set is empty")

        def draw(count: int, draw_seed: int) -> list[Any]:
            rng = random.Random(draw_seed)
            if count <= len(pool):
                return rng.sample(pool, count)
            return [rng.choice(pool) for _ in range(count)]

        levels = [int(getattr(p, "level", 0)) for p in pool]
        return PromptSampler(draw, levels, seed, epochs=pool if order == "epochs" else None)
