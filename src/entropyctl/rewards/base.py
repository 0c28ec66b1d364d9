"""The base of every reward function: status counters and the batch call."""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from entropyctl.rewards.math import STATUSES, Status

__all__ = ["RewardFunction", "reward_info", "call_reward", "takes_info"]


def takes_info(fn: Callable[..., Any]) -> bool:
    """Whether a reward function has a parameter named ``info`` (it is then called with the row's
    :func:`reward_info`)."""
    try:
        return "info" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False


def reward_info(problem: Any) -> dict[str, Any]:
    """What a reward function's ``info`` holds for ``problem``: its file row's columns but the prompt's
    (``data_source``, ``extra_info``, ``reward_model``, ...; none for a built-in task), its ``prompt`` (the
    problem's text as the data gives it, before ``data.template`` and the chat template) and its ``level``
    (unless the row has a column of that name)."""
    meta = getattr(problem, "meta", None) or {}
    return {"level": getattr(problem, "level", 0), **meta.get("columns", {}), "prompt": problem.prompt}


def call_reward(
    reward: Callable[..., list[float]], completions: Sequence[str], problems: Sequence[Any], repeat: int
) -> list[float]:
    """``reward(completions, answers)`` for ``repeat`` completions of each problem in turn, with each one's
    :func:`reward_info` as a third list when the reward takes it (:attr:`RewardFunction.takes_info`); any
    other callable is called with the two lists alone."""
    answers = [p.answer for p in problems for _ in range(repeat)]
    if getattr(reward, "takes_info", False):
        return reward(completions, answers, [reward_info(p) for p in problems for _ in range(repeat)])
    return reward(completions, answers)


class RewardFunction:
    """Base class: status counters and the batch call. Subclasses implement :meth:`score_one`; one that
    sets ``takes_info`` implements :meth:`score_with_info` instead, given each completion's
    :func:`reward_info`."""

    name: str = "reward"
    takes_info: bool = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset_metrics()

    def score_one(self, completion: str, answer: str) -> tuple[float, Status]:
        raise NotImplementedError

    def score_with_info(self, completion: str, answer: str, info: Mapping[str, Any]) -> tuple[float, Status]:
        """:meth:`score_one` of a reward that sets ``takes_info``, given the row's :func:`reward_info`."""
        raise NotImplementedError

    def __call__(
        self,
        completions: Sequence[str],
        answers: Sequence[str],
        infos: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[float]:
        if len(completions) != len(answers) or (infos is not None and len(infos) != len(answers)):
            got = "" if infos is None else f" and {len(infos)} infos"
            raise ValueError(
                f"reward '{self.name}': got {len(completions)} completions but {len(answers)} answers{got} "
                "(expected one answer per completion)"
            )
        start = time.perf_counter()
        if self.takes_info:
            rows = infos if infos is not None else [{}] * len(answers)
            scored = [
                self.score_with_info(c, a, i) for c, a, i in zip(completions, answers, rows, strict=True)
            ]
        else:
            scored = [self.score_one(c, a) for c, a in zip(completions, answers, strict=True)]
        elapsed = time.perf_counter() - start
        with self._lock:
            for _, status in scored:
                self._counts[status] += 1
            self._seconds += elapsed
        return [score for score, _ in scored]

    def metrics(self) -> dict[str, float]:
        """Counts per status (correct, wrong, no_answer, parse_error, timeout), total and seconds."""
        with self._lock:
            out: dict[str, float] = dict(self._counts)
            out["total"] = sum(self._counts.values())
            out["seconds"] = self._seconds
        return out

    def reset_metrics(self) -> None:
        with self._lock:
            self._counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
            self._seconds = 0.0

    def close(self) -> None:
        """Release resources (worker processes); the reward must not be called afterwards."""

    def __enter__(self) -> RewardFunction:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
