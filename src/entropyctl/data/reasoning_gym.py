"""Procedural tasks from reasoning-gym (the ``tasks`` extra) as training data with graded difficulty.

``data.source: reasoning_gym`` picks any dataset reasoning-gym registers by ``data.name``
(``chain_sum``, ``basic_arithmetic``, ``leg_counting``, ``countdown``, ...). ``data.options`` go to the
dataset's own config class for every level; ``data.levels`` maps a difficulty level to the parameters
that define it, on top of the options::

    data:
      source: reasoning_gym
      name: chain_sum
      levels:
        1: {min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}
        2: {min_terms: 3, max_terms: 3, min_digits: 1, max_digits: 1}
        3: {min_terms: 3, max_terms: 3, min_digits: 2, max_digits: 2}

Each level is one dataset object ``create_dataset(name, seed=data.seed, size=size, **options, **level)``,
whose item ``i`` is a fixed function of (seed, i). Its index range is split once: the last tenth
``[size − size//10, size)`` is the held-out range, the rest the training range. The held-out split
takes the first distinct questions of each level's held-out range (balanced over levels); a training
draw picks a level by ``data.weights`` and a uniform index of its training range, and is drawn again
when its question text is one of the held-out questions, so the two never share a question. A draw
is a function of the generator it is given: the trainer's prompt sampler seeds one per
(seed, rank, step), so a resumed run draws what the uninterrupted run drew.

Every problem's ``answer`` is a :class:`GoldAnswer`: the entry's gold answer text that also carries
the entry itself and how to rebuild its dataset, which reasoning-gym's ``score_answer`` needs
(:mod:`entropyctl.rewards.reasoning_gym`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import random
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

from entropyctl.data.synthetic import Problem

__all__ = [
    "DEFAULT_SIZE",
    "EXTRA",
    "DatasetSpec",
    "GoldAnswer",
    "ReasoningGymTask",
    "TaskError",
    "available_datasets",
    "import_reasoning_gym",
]

#: The extra that installs reasoning-gym.
EXTRA = "tasks"
#: Items per level when ``data.options`` gives no ``size`` (the index range split into training and held-out).
DEFAULT_SIZE = 10_000
# A training draw whose question is held out is drawn again, at most this many times.
_MAX_REDRAWS = 1000
# Problems drawn to collect the tiny model's alphabet (with the held-out split).
_ALPHABET_SAMPLE = 2000


class TaskError(ValueError):
    """A reasoning-gym task that cannot be built: the extra is not installed, no such dataset, a
    parameter its config rejects, too few distinct questions. The message names the field."""


def import_reasoning_gym() -> Any:
    """The ``reasoning_gym`` module, or a :class:`TaskError` naming the extra that installs it."""
    try:
        import reasoning_gym
    except ImportError:
        raise TaskError(
            f"data.source 'reasoning_gym' needs the reasoning-gym package: pip install 'entropyctl[{EXTRA}]'"
        ) from None
    return reasoning_gym


def available_datasets() -> list[str]:
    """Every dataset name reasoning-gym registers."""
    import_reasoning_gym()
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def _check_name(name: str) -> None:
    names = available_datasets()
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else f"{len(names)} datasets: {', '.join(names)}"
    raise TaskError(f"data.name: reasoning-gym has no dataset {name!r}; {hint}")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How to rebuild one level's dataset: ``create_dataset(name, seed=seed, size=size, **config)``."""

    name: str
    config_json: str  # the options and the level's parameters, JSON with sorted keys
    seed: int
    size: int

    @property
    def config(self) -> dict[str, Any]:
        return dict(json.loads(self.config_json))

    def create(self) -> Any:
        from reasoning_gym import create_dataset

        return create_dataset(self.name, seed=self.seed, size=self.size, **self.config)


class GoldAnswer(str):
    """A reasoning-gym entry's gold answer as text (``""`` when the dataset has no single gold answer),
    carrying the ``entry`` and the ``spec`` of its dataset for the verifier."""

    entry: dict[str, Any]
    spec: DatasetSpec

    def __new__(cls, entry: Mapping[str, Any], spec: DatasetSpec) -> GoldAnswer:
        answer = entry.get("answer")
        value = super().__new__(cls, "" if answer is None else str(answer))
        value.entry = dict(entry)
        value.spec = spec
        return value

    def __getnewargs__(self) -> tuple[Any, ...]:  # type: ignore[override]
        return (self.entry, self.spec)


def _level_label(params: Mapping[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in params.items()) or "defaults"


class ReasoningGymTask:
    """One reasoning-gym dataset as a graded task: a training stream and a disjoint held-out split.

    ``levels``: level → dataset parameters (None: one level, 0, with ``options`` only);
    ``weights``: mixture weight per level (in the order of ``levels``; None: uniform);
    ``held_out_size``: problems in the held-out split (balanced over levels);
    ``strip_prefix``: text removed from the start of every question that begins with it (a dataset's
    fixed instruction, which a tiny character model only pays for); the verifier still sees the entry.
    """

    def __init__(
        self,
        name: str,
        options: Mapping[str, Any] | None = None,
        levels: Mapping[int, Mapping[str, Any]] | None = None,
        weights: Sequence[float] | None = None,
        seed: int = 0,
        *,
        held_out_size: int = 64,
        strip_prefix: str | None = None,
    ) -> None:
        import_reasoning_gym()
        _check_name(name)
        options = dict(options or {})
        for reserved in ("seed",):
            if reserved in options:
                raise TaskError(f"data.options.{reserved}: set data.seed instead (the task owns the seed)")
        size = int(options.pop("size", DEFAULT_SIZE))
        if size < 20:
            raise TaskError(f"data.options.size: must be ≥ 20 items per level (got {size})")
        level_params = {0: {}} if not levels else {int(k): dict(v or {}) for k, v in levels.items()}
        self.name = name
        self.options = options
        self.seed = int(seed)
        self.size = size
        self.held_out_size = int(held_out_size)
        self.strip_prefix = strip_prefix or None
        self.levels: tuple[int, ...] = tuple(sorted(level_params))
        self.level_params = {level: level_params[level] for level in self.levels}
        self.weights = self._check_weights(weights, levels)
        self.train_end = size - size // 10
        self.specs: dict[int, DatasetSpec] = {}
        self._datasets: dict[int, Any] = {}
        for level in self.levels:
            params = {**options, **self.level_params[level]}
            spec = DatasetSpec(name, json.dumps(params, sort_keys=True), self.seed, size)
            self.specs[level] = spec
            self._datasets[level] = self._create(spec, level, params)
        self._rng = random.Random(self.seed)

    def _check_weights(
        self, weights: Sequence[float] | None, levels: Mapping[int, Any] | None
    ) -> tuple[float, ...]:
        if weights is None:
            return (1.0,) * len(self.levels)
        if len(weights) != len(self.levels):
            raise TaskError(
                f"data.weights: one weight per level expected ({len(self.levels)} levels, got {len(weights)})"
            )
        # weights follow data.levels as written; re-order them with the sorted levels
        written = [int(k) for k in levels] if levels else [0]
        by_level = dict(zip(written, (float(w) for w in weights), strict=True))
        return tuple(by_level[level] for level in self.levels)

    def _create(self, spec: DatasetSpec, level: int, params: Mapping[str, Any]) -> Any:
        from reasoning_gym.factory import DATASETS

        where = "data.options" if not self.level_params[level] else f"data.levels.{level}"
        config_cls = DATASETS[self.name][1]
        valid = [f.name for f in dataclasses.fields(config_cls) if f.name not in ("seed", "size")]
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise TaskError(
                f"{where}: {self.name} has no parameter {', '.join(map(repr, unknown))} "
                f"(valid: {', '.join(valid)})"
            )
        try:
            return spec.create()
        except (AssertionError, ValueError, TypeError) as err:
            raise TaskError(
                f"{where}: {self.name} rejects {_level_label(params)}: {err or type(err).__name__}"
            ) from None

    @property
    def level_names(self) -> dict[int, str]:
        """Each level's parameters, as text."""
        return {level: _level_label(self.level_params[level]) for level in self.levels}

    def identity(self) -> dict[str, Any]:
        """Everything that decides the problems drawn (for cache keys)."""
        import importlib.metadata

        return {
            "source": "reasoning_gym",
            "reasoning_gym": importlib.metadata.version("reasoning-gym"),
            "name": self.name,
            "options": self.options,
            "levels": {str(level): self.level_params[level] for level in self.levels},
            "weights": list(self.weights),
            "seed": self.seed,
            "size": self.size,
            "held_out_size": self.held_out_size,
            "strip_prefix": self.strip_prefix,
        }

    def problem(self, level: int, index: int) -> Problem:
        """Item ``index`` of ``level``'s dataset as a :class:`Problem`."""
        entry = self._datasets[level][index]
        question = str(entry["question"])
        if self.strip_prefix and question.startswith(self.strip_prefix):
            question = question[len(self.strip_prefix) :]
        return Problem(
            prompt=question,
            answer=GoldAnswer(entry, self.specs[level]),
            level=level,
            id=f"{self.name}:L{level}:{index}",
            meta={"source": self.name, "index": index},
        )

    @cached_property
    def held_out_problems(self) -> list[Problem]:
        """The held-out split: the first distinct questions of each level's held-out index range."""
        problems: list[Problem] = []
        per_level, extra = divmod(self.held_out_size, len(self.levels))
        for i, level in enumerate(self.levels):
            count = per_level + (1 if i < extra else 0)
            seen: set[str] = set()
            for index in range(self.train_end, self.size):
                if len(seen) >= count:
                    break
                problem = self.problem(level, index)
                if problem.prompt not in seen:
                    seen.add(problem.prompt)
                    problems.append(problem)
            if len(seen) < count:
                raise TaskError(
                    f"data.levels.{level}: its held-out range (items {self.train_end}..{self.size - 1}) holds "
                    f"{len(seen)} distinct questions, the held-out split needs {count}; "
                    "raise data.options.size or lower eval.n_prompts"
                )
        return problems

    @cached_property
    def _held_out_questions(self) -> frozenset[str]:
        return frozenset(p.prompt for p in self.held_out_problems)

    def held_out(self, n: int | None = None) -> list[Problem]:
        """The held-out split (its first ``n`` problems when given)."""
        problems = self.held_out_problems
        return list(problems if n is None else problems[:n])

    def sample(self, n: int, rng: random.Random | int | None = None) -> list[Problem]:
        """``n`` training problems, never a held-out question; levels drawn by the mixture weights.

        ``rng``: a generator or a seed (None: the task's own seeded generator, which advances).
        """
        if n < 0:
            raise TaskError(f"n must be >= 0, got {n}")
        generator = (
            self._rng if rng is None else rng if isinstance(rng, random.Random) else random.Random(rng)
        )
        held_out = self._held_out_questions
        problems = []
        for level in generator.choices(self.levels, weights=self.weights, k=n):
            for _ in range(_MAX_REDRAWS):
                problem = self.problem(level, generator.randrange(self.train_end))
                if problem.prompt not in held_out:
                    break
            else:
                raise TaskError(
                    f"data.levels.{level}: {_MAX_REDRAWS} training draws in a row were held-out questions; "
                    "the level has too few distinct questions for its held-out split (lower eval.n_prompts)"
                )
            problems.append(problem)
        return problems

    def stream(self, seed: int) -> ReasoningGymTask:
        """This task with its own generator seeded by ``seed`` (same levels, same held-out split)."""
        other = copy.copy(self)
        other._rng = random.Random(seed)
        return other

    @cached_property
    def alphabet(self) -> str:
        """Every character of the held-out split and of a fixed sample of training problems (sorted)."""
        problems = self.held_out_problems + self.sample(
            _ALPHABET_SAMPLE, random.Random(f"alphabet:{self.seed}")
        )
        return "".join(sorted({c for p in problems for c in p.prompt + p.answer}))

    def check_gold_answers(self, n: int = 32) -> None:
        """Raise when the dataset has no single gold answer (a supervised warm start needs one)."""
        for problem in self.sample(n, random.Random(0)):
            if not problem.answer:
                raise TaskError(
                    f"data.name: {self.name} has no single gold answer per question (its verifier checks a "
                    "solution instead), so the tiny model cannot be warm-started on it; use a model that "
                    "needs no warm start (model.kind: hf or gguf)"
                )

    def __repr__(self) -> str:
        return f"ReasoningGymTask({self.name!r}, levels={self.level_names}, seed={self.seed})"
