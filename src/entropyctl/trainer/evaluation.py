"""pass@k evaluation with sampling (used by training's validation and by ``entropyctl evaluate``).

pass@k is estimated with the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language
Models Trained on Code"): draw ``n ≥ k`` samples per problem, count the ``c`` correct ones, and

    pass@k = E_problems[ 1 − C(n−c, k) / C(n, k) ].

The ratio of binomials is computed as a product, ``C(n−c, k)/C(n, k) = Π_{i=n−c+1}^{n} (1 − k/i)``,
which never forms the (huge) binomials themselves.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from entropyctl.rewards.base import call_reward
from entropyctl.trainer.run_dir import pass_k, pass_key

__all__ = [
    "pass_at_k",
    "ProblemOutcome",
    "eval_set_of",
    "summarize_pass_at_k",
    "count_correct",
    "evaluate_problems",
    "format_eval_table",
    "parse_ks",
]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``c`` correct out of ``n`` samples (Chen et al. 2021).

    ``1 − C(n−c, k)/C(n, k)``, computed as ``1 − Π_{i=n−c+1}^{n} (1 − k/i)``; exactly 1.0 when
    ``n − c < k`` (every size-k subset holds a correct sample).
    """
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise TypeError(f"pass_at_k expects integers, got n={n!r}, c={c!r}, k={k!r}")
    if n < 1 or k < 1:
        raise ValueError(f"pass_at_k needs n ≥ 1 and k ≥ 1, got n={n}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least k={k} samples per problem, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"correct count c={c} must be in [0, n={n}]")
    if n - c < k:
        return 1.0
    # log-space product: stable for large n (no underflow of intermediate products to 0 too early)
    log_miss = sum(math.log1p(-k / i) for i in range(n - c + 1, n + 1))
    return 1.0 - math.exp(log_miss)


@dataclass(frozen=True)
class ProblemOutcome:
    """``correct`` successes out of ``n`` samples for one problem, with its group key (difficulty level) and
    the held-out set it belongs to (None: the run has one)."""

    n: int
    correct: int
    group: Hashable = None
    eval_set: str | None = None


def eval_set_of(problem: Any) -> str | None:
    """The held-out set a problem belongs to (``meta["eval_set"]``; None when the run has one set)."""
    value = (getattr(problem, "meta", None) or {}).get("eval_set")
    return None if value is None else str(value)


def parse_ks(ks: str | Sequence[int]) -> list[int]:
    """``"1,4,8"`` or ``[1, 4, 8]`` → sorted unique positive ints."""
    if isinstance(ks, str):
        try:
            values = [int(x) for x in ks.split(",") if x.strip()]
        except ValueError as err:
            raise ValueError(f"--k expects comma-separated integers like '1,4,8', got {ks!r}") from err
    else:
        values = [int(x) for x in ks]
    if not values or any(v < 1 for v in values):
        raise ValueError(f"k values must be positive integers, got {ks!r}")
    return sorted(set(values))


def _mean_pass(outcomes: Sequence[ProblemOutcome], k: int) -> float:
    return sum(pass_at_k(o.n, o.correct, k) for o in outcomes) / len(outcomes)


def summarize_pass_at_k(outcomes: Sequence[ProblemOutcome], ks: Sequence[int]) -> dict[str, Any]:
    """The EVAL dict of the run-dir contract:
    ``{"pass@1": .., "pass@<k>": .., "by_level": {"<group>": {"pass@1": .., "n_problems": ..}},
    "n_samples": n, "n_problems": m}``, and ``"by_set"`` (the same per held-out set) when outcomes name
    their set. The overall pass@k is the mean over every problem of every set. ks larger than the smallest
    n are skipped (not estimable)."""
    if not outcomes:
        raise ValueError("pass@k needs at least one evaluated problem")
    n_min = min(o.n for o in outcomes)
    usable = [k for k in parse_ks(ks) if k <= n_min]
    result: dict[str, Any] = {pass_key(k): _mean_pass(outcomes, k) for k in usable}
    groups: dict[Hashable, list[ProblemOutcome]] = defaultdict(list)
    for o in outcomes:
        if o.group is not None:
            groups[o.group].append(o)

    def entry(members: list[ProblemOutcome]) -> dict[str, float]:
        return {**{pass_key(k): _mean_pass(members, k) for k in usable}, "n_problems": len(members)}

    result["by_level"] = {str(g): entry(groups[g]) for g in sorted(groups, key=lambda g: (str(type(g)), g))}
    sets: dict[str, list[ProblemOutcome]] = {}
    for o in outcomes:
        if o.eval_set is not None:
            sets.setdefault(o.eval_set, []).append(o)
    if sets:  # in the order the sets come (the config's)
        result["by_set"] = {name: entry(members) for name, members in sets.items()}
    result["n_samples"] = n_min
    result["n_problems"] = len(outcomes)
    return result


def count_correct(
    problems: Sequence[Any],
    sample_fn: Callable[[Sequence[Any], int], list[list[str]]],
    reward_fn: Callable[[list[str], list[str]], list[float]],
    *,
    n: int,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> list[int]:
    """Sample ``n`` completions per problem and count the correct ones (reward == 1; a
    partial-credit score below 1 is not a solve).

    problems: objects with ``.answer`` (and ``.prompt``, for a reward that takes the row's ``info``).
    sample_fn(batch, n) -> for each problem of the batch, its ``n`` decoded completions.
    """
    if n < 1:
        raise ValueError(f"eval n_samples must be ≥ 1, got {n}")
    counts: list[int] = []
    for start in range(0, len(problems), batch_size):
        batch = list(problems[start : start + batch_size])
        texts = sample_fn(batch, n)
        if len(texts) != len(batch) or any(len(t) != n for t in texts):
            raise RuntimeError(f"sample_fn returned {[len(t) for t in texts]} completions, expected {n} each")
        flat = [t for group in texts for t in group]
        rewards = call_reward(reward_fn, flat, batch, n)
        counts.extend(sum(1 for r in rewards[i * n : (i + 1) * n] if r >= 1.0) for i in range(len(batch)))
        if progress is not None:
            progress(min(start + batch_size, len(problems)), len(problems))
    return counts


def evaluate_problems(
    problems: Sequence[Any],
    sample_fn: Callable[[Sequence[Any], int], list[list[str]]],
    reward_fn: Callable[[list[str], list[str]], list[float]],
    *,
    n: int,
    ks: Sequence[int],
    batch_size: int = 32,
    group_of: Callable[[Any], Hashable] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Sample ``n`` completions per problem, score them, and summarize pass@k overall, per group
    (``group_of(problem)``, default its ``.level``) and per held-out set (:func:`eval_set_of`). See
    :func:`count_correct`."""
    group_of = group_of or (lambda p: getattr(p, "level", None))
    counts = count_correct(problems, sample_fn, reward_fn, n=n, batch_size=batch_size, progress=progress)
    outcomes = [
        ProblemOutcome(n, c, group_of(p), eval_set_of(p)) for p, c in zip(problems, counts, strict=True)
    ]
    return summarize_pass_at_k(outcomes, ks)


def format_eval_table(result: dict[str, Any], title: str = "") -> str:
    """A plain-text table: one row per group plus an ``all`` row, one column per pass@k."""
    keys = [key for key in result if pass_k(key) is not None]
    header = ["level", "problems", *keys]
    groups = [
        *((str(level), entry) for level, entry in result.get("by_level", {}).items()),
        *((f"set {name}", entry) for name, entry in result.get("by_set", {}).items()),
        ("all", result),
    ]
    rows = [[label, str(int(e["n_problems"])), *(f"{e[k]:.3f}" for k in keys)] for label, e in groups]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    lines = []
    if title:
        lines.append(f"{title} (n={result.get('n_samples')} samples per problem)")
    lines.append("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- CLI
