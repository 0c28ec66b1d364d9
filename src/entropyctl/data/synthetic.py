"""Synthetic graded arithmetic: the embedded default task, made for a tiny character-level model.

A prompt is an expression followed by ``=``; the completion is the decimal answer alone (followed
by the model's EOS token); every answer is a non-negative integer. Example: prompt ``"12+7="``,
answer ``"19"``. Prompts and answers use only the characters of :data:`ALPHABET`.

Levels (difficulty grows with the number of digits, terms and operations):

=====  =================================  ======================================  ===============
level  form                               operands                                 example
=====  =================================  ======================================  ===============
1      ``a+b``                            a, b in 0..9                             ``3+4=`` → 7
2      ``a+b``                            a in 10..99, b in 0..9                   ``47+8=`` → 55
3      ``a+b`` or ``a-b``                 a, b in 10..99; a-b only when a >= b     ``83-27=`` → 56
4      ``a+b-c``                          a, b, c in 10..99; c <= a+b              ``45+38-61=`` → 22
5      ``a*b+c`` or ``(a+b)*c``           a*b+c: a, b in 2..12, c in 0..99;        ``7*8+15=`` → 71
                                          (a+b)*c: a, b in 1..9, c in 2..9         ``(3+5)*7=`` → 56
=====  =================================  ======================================  ===============

Held-out split: a prompt belongs to the held-out split when a stable hash (BLAKE2b) of its text
falls in the first ``held_out_fraction`` of the hash range; :meth:`SyntheticArithmetic.sample`
never returns such a prompt and :meth:`SyntheticArithmetic.held_out` returns only such prompts, so
the two are disjoint for every seed.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ALPHABET", "LEVEL_NAMES", "Problem", "SyntheticArithmetic"]

#: Every character a synthetic prompt or answer can contain (a char tokenizer's base vocabulary).
ALPHABET = "0123456789+-*()="


@dataclass(frozen=True)
class Problem:
    """One prompt with its verifiable answer. ``level`` is the difficulty (0 when unknown)."""

    prompt: str
    answer: str
    level: int = 0
    id: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)


LEVEL_NAMES: dict[int, str] = {
    1: "a+b, one-digit",
    2: "a+b, two-digit + one-digit",
    3: "a±b, two-digit",
    4: "a+b-c, two-digit",
    5: "a*b+c or (a+b)*c",
}


def _level1(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return f"{a}+{b}", a + b


def _level2(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(10, 99), rng.randint(0, 9)
    return f"{a}+{b}", a + b


def _level3(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if rng.random() < 0.5:
        return f"{a}+{b}", a + b
    a, b = max(a, b), min(a, b)
    return f"{a}-{b}", a - b


def _level4(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    c = rng.randint(10, min(99, a + b))
    return f"{a}+{b}-{c}", a + b - c


def _level5(rng: random.Random) -> tuple[str, int]:
    if rng.random() < 0.5:
        a, b, c = rng.randint(2, 12), rng.randint(2, 12), rng.randint(0, 99)
        return f"{a}*{b}+{c}", a * b + c
    a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(2, 9)
    return f"({a}+{b})*{c}", (a + b) * c


GENERATORS: dict[int, Callable[[random.Random], tuple[str, int]]] = {
    1: _level1,
    2: _level2,
    3: _level3,
    4: _level4,
    5: _level5,
}

# Give up looking for an unseen held-out prompt after this many draws (small levels run out).
_MAX_DISTINCT_TRIES = 500


#: draws of one level before :meth:`SyntheticArithmetic._draw` gives up on finding a prompt on its side
#: of the split (level 1 has 100 prompts: at the default fraction a draw is held out one time in ten)
_MAX_DRAWS = 100_000


class SyntheticArithmetic:
    """A mixture of graded arithmetic levels.

    ``levels``: which levels to draw from; ``weights``: one non-negative mixture weight per level
    (default uniform); ``seed``: seeds :meth:`sample`'s own generator, so a fresh instance with the
    same arguments yields the same sequence of batches.
    """

    def __init__(
        self,
        levels: Sequence[int] = (1, 2, 3, 4, 5),
        weights: Sequence[float] | None = None,
        seed: int = 0,
        *,
        held_out_fraction: float = 0.1,
    ) -> None:
        levels = tuple(int(level) for level in levels)
        if not levels:
            raise ValueError("levels must name at least one level, got none")
        unknown = [level for level in levels if level not in GENERATORS]
        if unknown:
            raise ValueError(f"unknown level(s) {unknown}; available levels: {sorted(GENERATORS)}")
        if len(set(levels)) != len(levels):
            raise ValueError(f"levels must not repeat, got {list(levels)}")
        if weights is None:
            weights = [1.0] * len(levels)
        weights = [float(w) for w in weights]
        if len(weights) != len(levels):
            raise ValueError(
                f"weights must have one entry per level: {len(levels)} levels {list(levels)}, "
                f"got {len(weights)} weights {weights}"
            )
        if any(not (w >= 0.0) or w == float("inf") for w in weights):
            raise ValueError(f"weights must be finite and non-negative, got {weights}")
        if sum(weights) <= 0.0:
            raise ValueError(f"weights must sum to more than 0, got {weights}")
        if not 0.0 < held_out_fraction < 1.0:
            raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
        self.levels = levels
        self.weights = tuple(weights)
        self.seed = seed
        self.held_out_fraction = held_out_fraction
        self._rng = random.Random(seed)

    @property
    def level_names(self) -> dict[int, str]:
        """Human-readable form of each level in this mixture."""
        return {level: LEVEL_NAMES[level] for level in self.levels}

    def is_held_out(self, prompt: str) -> bool:
        """Whether ``prompt`` belongs to the held-out split (a stable hash of its text)."""
        digest = hashlib.blake2b(prompt.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") < self.held_out_fraction * 2**64

    def _draw(self, rng: random.Random, level: int, held_out: bool) -> Problem:
        generate = GENERATORS[level]
        for _ in range(_MAX_DRAWS):
            expression, value = generate(rng)
            prompt = expression + "="
            if self.is_held_out(prompt) == held_out:
                return Problem(prompt, str(value), level, id=f"L{level}:{expression}")
        side = "held-out" if held_out else "training"
        raise ValueError(
            f"level {level}: no {side} prompt in {_MAX_DRAWS} draws with held_out_fraction="
            f"{self.held_out_fraction} (the level has too few prompts for that split); choose a "
            "fraction nearer 0.5 or another level"
        )

    def _levels_for(self, n: int, rng: random.Random) -> list[int]:
        return rng.choices(self.levels, weights=self.weights, k=n)

    def sample(self, n: int, rng: random.Random | int | None = None) -> list[Problem]:
        """``n`` training problems (never held-out ones), levels drawn by the mixture weights.

        With ``rng=None`` the instance's own seeded generator advances, so successive calls give
        different, reproducible batches; pass an int or a :class:`random.Random` to draw elsewhere.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        generator = (
            self._rng if rng is None else rng if isinstance(rng, random.Random) else random.Random(rng)
        )
        return [self._draw(generator, level, held_out=False) for level in self._levels_for(n, generator)]

    def held_out(self, n: int, seed: int = 0) -> list[Problem]:
        """``n`` held-out problems, distinct while each level has unseen held-out prompts left.

        Deterministic in ``seed`` and independent of :meth:`sample`'s state.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = random.Random(f"held-out:{seed}")
        seen: set[str] = set()
        exhausted: set[int] = set()  # levels whose held-out prompts all appeared: repeats allowed
        problems = []
        for level in self._levels_for(n, rng):
            problem = self._draw(rng, level, held_out=True)
            tries = 1
            while level not in exhausted and problem.prompt in seen:
                if tries >= _MAX_DISTINCT_TRIES:
                    exhausted.add(level)
                    break
                problem = self._draw(rng, level, held_out=True)
                tries += 1
            seen.add(problem.prompt)
            problems.append(problem)
        return problems

    def __iter__(self) -> SyntheticArithmetic:
        return self

    def __next__(self) -> Problem:
        return self.sample(1)[0]

    def __repr__(self) -> str:
        return f"SyntheticArithmetic(levels={self.levels}, weights={self.weights}, seed={self.seed})"
