"""Reward functions picked by name: ``math``, ``exact``, ``reasoning_gym``, or a ``module:function`` path.

Every reward is an object with ``__call__(completions, answers) -> list[float]``, ``metrics()``
(counts per status since the last ``reset_metrics()``) and ``close()``.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from entropyctl.rewards.base import RewardFunction
from entropyctl.rewards.math import (
    DEFAULT_TIMEOUT_S,
    MathVerifier,
    Status,
    check_answer,
    check_timeout,
    extract_answer,
)

__all__ = [
    "RewardFunction",
    "MathReward",
    "ExactReward",
    "FunctionReward",
    "ProcessFunctionReward",
    "register_reward",
    "available_rewards",
    "get_reward",
]


class MathReward(RewardFunction):
    """1.0 when the completion's final answer equals the gold answer (integer fast path, else SymPy).

    ``timeout`` is the hard per-answer limit in seconds (worker killed and replaced when exceeded);
    ``num_workers`` verification processes serve concurrent callers.
    """

    name = "math"

    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT_S,
        num_workers: int = 1,
        *,
        last_number: bool = True,
        verifier: MathVerifier | None = None,
    ) -> None:
        super().__init__()
        self.timeout = check_timeout(timeout)
        self.last_number = last_number
        self._owns_verifier = verifier is None
        self.verifier = verifier if verifier is not None else MathVerifier(num_workers, timeout=timeout)

    def score_one(self, completion: str, answer: str) -> tuple[float, Status]:
        result = check_answer(
            completion, answer, self.timeout, verifier=self.verifier, last_number=self.last_number
        )
        return result.score, result.status

    def warmup(self) -> None:
        """Start the worker processes now (they otherwise start on the first non-numeric answer)."""
        self.verifier.warmup()

    def close(self) -> None:
        if self._owns_verifier:
            self.verifier.close()


def normalize_answer(text: str) -> str:
    """Lower-case, NUL-free, whitespace-collapsed text without surrounding ``$`` or a final period."""
    text = text.replace("\x00", "").strip().strip("$").strip().rstrip(".").strip()
    return re.sub(r"\s+", " ", text).lower()


class ExactReward(RewardFunction):
    """1.0 when the normalized final answer equals the normalized gold answer (no SymPy).

    The final answer is :func:`extract_answer`'s result when it finds one, else the whole completion.
    """

    name = "exact"

    def __init__(self, *, extract: bool = True) -> None:
        super().__init__()
        self.extract = extract

    def score_one(self, completion: str, answer: str) -> tuple[float, Status]:
        candidate = extract_answer(completion, last_number=False) if self.extract else None
        if candidate is None:
            candidate = completion
        predicted = normalize_answer(candidate)
        if not predicted:
            return 0.0, "no_answer"
        ok = predicted == normalize_answer(answer)
        return float(ok), "correct" if ok else "wrong"


class FunctionReward(RewardFunction):
    """Wraps a plain ``fn(completion, answer) -> float``; a score > 0 counts as ``correct``.

    Runs ``fn`` in this process with no timeout (for trusted in-memory callables);
    ``get_reward("package.module:function")`` gives a :class:`ProcessFunctionReward` instead."""

    def __init__(self, fn: Callable[[str, str], float], name: str | None = None) -> None:
        super().__init__()
        self.fn = fn
        self.name = name if name is not None else str(getattr(fn, "__qualname__", repr(fn)))

    def score_one(self, completion: str, answer: str) -> tuple[float, Status]:
        score = float(self.fn(completion, answer))
        return score, "correct" if score > 0 else "wrong"


class ProcessFunctionReward(RewardFunction):
    """A ``package.module:function`` reward run in worker processes under a hard per-answer timeout.

    The function, ``fn(completion, answer) -> float``, is imported and called in ``num_workers`` separate
    processes; an answer not scored within ``timeout`` seconds scores 0 with status ``timeout`` (counted
    per step as ``reward_timeout``) and its worker is killed and replaced, so a function that never
    returns cannot hang training. An exception in the function is raised here with its traceback.
    """

    def __init__(self, path: str, *, timeout: float = DEFAULT_TIMEOUT_S, num_workers: int = 1) -> None:
        super().__init__()
        self.name = path
        self.timeout = check_timeout(timeout, f"reward {path!r}: timeout")
        source = (Path(__file__).with_name("_function_worker.py")).read_text()
        # the worker imports the function with this process's sys.path ('' = the current directory)
        search_path = os.pathsep.join(p or os.getcwd() for p in sys.path)
        self.pool = MathVerifier(
            num_workers,
            timeout=self.timeout,
            worker_command=[sys.executable, "-c", source, path, search_path],
        )

    def score_one(self, completion: str, answer: str) -> tuple[float, Status]:
        reply = self.pool.request(completion, answer)
        status = reply["status"]
        if status == "error":
            raise RuntimeError(
                f"reward {self.name!r} raised in its worker process:\n{reply.get('detail', '')}"
            )
        if status in ("timeout", "parse_error"):
            return 0.0, status
        return float(reply["score"]), status

    def warmup(self) -> None:
        """Start the workers now (import the function) instead of on the first answer."""
        self.pool.warmup()

    def close(self) -> None:
        self.pool.close()


_REGISTRY: dict[str, Callable[..., RewardFunction]] = {}


def register_reward(name: str) -> Callable[[Callable[..., RewardFunction]], Callable[..., RewardFunction]]:
    """Decorator: make a reward class or factory available to :func:`get_reward` under ``name``."""

    def decorate(factory: Callable[..., RewardFunction]) -> Callable[..., RewardFunction]:
        if ":" in name:
            raise ValueError(f"reward name {name!r} may not contain ':' (reserved for module:function paths)")
        _REGISTRY[name] = factory
        return factory

    return decorate


register_reward("math")(MathReward)
register_reward("exact")(ExactReward)


@register_reward("reasoning_gym")
def _reasoning_gym_reward(**kwargs: Any) -> RewardFunction:
    # imported on use: reasoning-gym is an optional extra
    from entropyctl.rewards.reasoning_gym import ReasoningGymReward

    return ReasoningGymReward(**kwargs)


def available_rewards() -> list[str]:
    return sorted(_REGISTRY)


def get_reward(name_or_path: str, **kwargs: Any) -> RewardFunction:
    """A reward by registered name (``math``, ``exact``) or ``package.module:function`` path.

    ``kwargs`` go to the registered factory (e.g. ``get_reward("math", timeout=2.0)``).
    """
    if name_or_path in _REGISTRY:
        return _REGISTRY[name_or_path](**kwargs)
    valid = f"one of {available_rewards()} or 'package.module:function'"
    if ":" not in name_or_path:
        raise ValueError(f"unknown reward {name_or_path!r}; expected {valid}")
    module_name, _, attr = name_or_path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"reward path {name_or_path!r} is malformed; expected {valid}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"reward {name_or_path!r}: cannot import module {module_name!r} ({exc})") from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"reward {name_or_path!r}: module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(
            f"reward {name_or_path!r} is not callable; expected a function (completion, answer) -> float"
        )
    unknown = sorted(set(kwargs) - {"timeout", "num_workers"})
    if unknown:
        raise ValueError(
            f"reward {name_or_path!r}: unknown options {unknown}; a function reward takes timeout, num_workers"
        )
    return ProcessFunctionReward(name_or_path, **kwargs)
