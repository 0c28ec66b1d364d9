"""The base of every reward function: status counters and the batch call."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from entropyctl.rewards.math import STATUSES, Status

__all__ = ["RewardFunction"]


class RewardFunction:
    """Base class: status counters and the batch call. Subclasses implement :meth:`score_one`."""

    name: str = "reward"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset_metrics()

    def score_one(self, completion: str, answer: str) -> tuple[float, Status]:
        raise NotImplementedError

    def __call__(self, completions: Sequence[str], answers: Sequence[str]) -> list[float]:
        if len(completions) != len(answers):
            raise ValueError(
                f"reward '{self.name}': got {len(completions)} completions but {len(answers)} answers "
                "(expected one answer per completion)"
            )
        start = time.perf_counter()
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
