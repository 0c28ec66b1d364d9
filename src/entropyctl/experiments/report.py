"""`entropyctl report DIR`: compare the runs of an ablation side by side.

Reads every run directory under ``DIR`` (``DIR/<arm>/seed<N>/`` as written by ``entropyctl ablate``,
each holding the run-dir contract of ``entropyctl train``: ``config.yaml``, ``metrics.csv``,
``summary.json``) and writes

- ``report.md``: one row per arm with mean ± std over seeds of the final held-out pass@1 and pass@k,
  the same per difficulty level, ``H/H0`` over the last quarter of training, collapse / explosion
  flags and the range of the global coefficient α; plus every run's own numbers;
- ``report.json``: every number in ``report.md`` and the per-run values behind them;
- PNG plots: entropy/H0 over steps (smoothed, seed band), α over steps, accuracy per difficulty level
  over steps, pass@k curves.

Definitions (also written into ``report.md``):

- ``H0`` of a run: the controller's anchored initial entropy (``summary.json`` ``h0``) when it is
  finite, else the mean entropy of the run's first logged step. All arms start from the same
  checkpoint with the same seeds, so this is the same quantity for every arm.
- ``H/H0 (last ¼)``: mean over the last quarter of the logged steps of ``entropy / H0``.
- collapse: ``H/H0 (last ¼) < 0.1``; explosion: ``H/H0 (last ¼) > 1.2`` (thresholds of issue 5).
- mean ± std over seeds uses the sample standard deviation (``ddof=1``); with one seed std is 0.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from entropyctl.trainer.run_dir import (
    RunDirError,
    Summary,
    column_level,
    level_column,
    pass_k,
    pass_key,
    read_summary,
)

__all__ = [
    "RunRecord",
    "ArmSummary",
    "COLLAPSE_RATIO",
    "EXPLOSION_RATIO",
    "load_run",
    "find_runs",
    "summarize_arm",
    "write_report",
]

COLLAPSE_RATIO = 0.1
EXPLOSION_RATIO = 1.2


class ReportError(ValueError):
    """A run directory does not follow the run-dir contract."""


@dataclass
class RunRecord:
    """One finished (or unfinished) training run as read from its directory."""

    path: Path
    arm: str
    seed: int | None
    config: dict[str, Any]
    metrics: dict[str, np.ndarray]
    summary: Summary

    @property
    def finished(self) -> bool:
        return self.summary.finished

    @property
    def steps(self) -> np.ndarray:
        if "step" in self.metrics:
            return self.metrics["step"]
        n = len(next(iter(self.metrics.values()))) if self.metrics else 0
        return np.arange(1, n + 1, dtype=float)

    def h0(self) -> float:
        """Initial entropy: the controller's anchor when finite, else the first step's entropy."""
        value = _as_float(self.summary.h0)
        if math.isfinite(value) and value > 0:
            return value
        entropy = self.metrics.get("entropy")
        if entropy is not None:
            finite = entropy[np.isfinite(entropy)]
            if finite.size:
                return float(finite[0])
        return math.nan

    def entropy_ratio(self) -> np.ndarray:
        entropy = self.metrics.get("entropy", np.array([]))
        return entropy / self.h0()

    def last_quarter(self, column: str) -> np.ndarray:
        values = self.metrics.get(column, np.array([]))
        n = len(values)
        if n == 0:
            return values
        start = n - max(1, n // 4)
        return values[start:]


@dataclass
class ArmSummary:
    """Aggregates over the seeds of one arm (what one row of the report table holds)."""

    arm: str
    runs: list[RunRecord]
    numbers: dict[str, Any] = field(default_factory=dict)


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _read_metrics(path: Path) -> dict[str, np.ndarray]:
    """metrics.csv → {column: float array}; empty cells and non-numbers become NaN."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            raise ReportError(f"{path}: empty file, expected a CSV header with at least 'step,entropy'")
        columns: dict[str, list[float]] = {name: [] for name in reader.fieldnames}
        for row in reader:
            for name in reader.fieldnames:
                columns[name].append(_as_float(row.get(name)))
    return {name: np.asarray(values, dtype=float) for name, values in columns.items()}


def load_run(run_dir: str | Path, arm: str | None = None) -> RunRecord:
    """Read one run directory (``config.yaml``, ``metrics.csv``, ``summary.json``)."""
    import yaml

    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    metrics_path = run_dir / "metrics.csv"
    config_path = run_dir / "config.yaml"
    try:
        summary = read_summary(summary_path)
    except RunDirError as err:
        raise ReportError(str(err)) from None
    metrics = _read_metrics(metrics_path) if metrics_path.exists() else {}
    config: dict[str, Any] = {}
    if config_path.exists():
        config = yaml.safe_load(config_path.read_text()) or {}
    match = re.fullmatch(r"seed(\d+)", run_dir.name)
    seed = int(match.group(1)) if match else None
    return RunRecord(
        path=run_dir,
        arm=arm if arm is not None else run_dir.parent.name,
        seed=seed,
        config=config,
        metrics=metrics,
        summary=summary,
    )


def find_runs(root: str | Path) -> dict[str, list[RunRecord]]:
    """All runs under an ablation directory, grouped by arm, in the ablation's arm order.

    The arm order and labels come from ``ablation.json`` (written by ``entropyctl ablate``) when
    present; otherwise every directory holding ``summary.json`` or ``metrics.csv`` is a run and its
    parent directory names the arm.
    """
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"{root}: not a directory; expected an ablation output directory")
    manifest_path = root / "ablation.json"
    arms: dict[str, list[RunRecord]] = {}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        for arm in manifest.get("arms", []):
            label, slug = arm["label"], arm["slug"]
            arm_dir = root / slug
            runs = []
            for seed_dir in sorted(arm_dir.glob("seed*"), key=_seed_key):
                if (seed_dir / "summary.json").exists() or (seed_dir / "metrics.csv").exists():
                    runs.append(load_run(seed_dir, arm=label))
            arms[label] = runs
        return arms
    run_dirs = sorted(
        {p.parent for pattern in ("summary.json", "metrics.csv") for p in root.rglob(pattern)},
        key=lambda p: (str(p.parent), _seed_key(p)),
    )
    if not run_dirs:
        raise ReportError(f"{root}: no run directories (none holds summary.json or metrics.csv)")
    for run_dir in run_dirs:
        arm = run_dir.parent.name if run_dir != root else root.name
        arms.setdefault(arm, []).append(load_run(run_dir, arm=arm))
    return arms


def _seed_key(path: Path) -> tuple[int, str]:
    match = re.fullmatch(r"seed(\d+)", path.name)
    return (int(match.group(1)) if match else 1 << 30, path.name)


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
    arr = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return {"mean": None, "std": None, "n": 0, "values": list(values)}
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "n": int(arr.size), "values": [float(v) for v in values]}


def _pass_keys(evals: list[dict[str, Any]]) -> list[str]:
    ks = sorted({k for e in evals for key in e if (k := pass_k(key)) is not None})
    return [pass_key(k) for k in ks]


def _first_and_last(keys: list[str]) -> list[str]:
    """pass@1 and pass@k_max of sorted pass keys (the during-training table and plot show both)."""
    return [keys[0], keys[-1]] if len(keys) > 1 else list(keys)


def _sorted_levels(levels: Iterable[str]) -> list[str]:
    """Difficulty-level names in numeric order (``"2"`` before ``"10"``); non-numeric names last."""
    return sorted(set(levels), key=lambda s: (int(s) if s.lstrip("-").isdigit() else 1 << 30, s))


def _levels(evals: list[dict[str, Any]]) -> list[str]:
    return _sorted_levels(str(level) for e in evals for level in (e.get("by_level") or {}))


#: Steps averaged for a level's starting entropy (one step holds only a few prompts of each level).
START_STEPS = 10


def _training_by_level(runs: list[RunRecord]) -> dict[str, dict[str, Any]]:
    """Per difficulty level, from the training metrics (``entropy_level_L``, ``acc_level_L``).

    ``entropy_start``: mean level entropy (nats) over the first :data:`START_STEPS` steps;
    ``entropy_last_quarter`` / ``accuracy_last_quarter``: means over the last quarter of steps.
    Each is mean ± std over seeds. Shows which level carries a fall or rise of the overall entropy.
    """
    levels = _sorted_levels(
        str(found) for r in runs for c in r.metrics if (found := column_level(c, "entropy")) is not None
    )

    def mean(values: np.ndarray) -> float:
        finite = values[np.isfinite(values)]
        return float(finite.mean()) if finite.size else math.nan

    out: dict[str, dict[str, Any]] = {}
    for level in levels:
        starts, lasts, accs = [], [], []
        for run in runs:
            entropy = run.metrics.get(level_column("entropy", level), np.array([]))
            starts.append(mean(entropy[:START_STEPS]))
            lasts.append(mean(run.last_quarter(level_column("entropy", level))))
            accs.append(mean(run.last_quarter(level_column("acc", level))))
        out[level] = {
            "entropy_start": _mean_std(starts),
            "entropy_last_quarter": _mean_std(lasts),
            "accuracy_last_quarter": _mean_std(accs),
        }
    return out


def _during(runs: list[RunRecord], keys: list[str]) -> dict[str, dict[str, Any]]:
    """Held-out pass@k at the intermediate evaluations (``eval.every``): {step: {key: mean ± std}}.

    Step "0" is the evaluation before training and the last step the one after it, so the table
    runs from the warm start to the end; a run that lacks a step counts as missing there.
    """
    per_run: list[dict[int, dict[str, Any]]] = []
    for run in runs:
        evals = {
            int(m.group(1)): value or {}
            for name, value in (run.summary.evals or {}).items()
            for m in [re.fullmatch(r"step_(\d+)", str(name))]
            if m
        }
        per_run.append(evals)
    if not any(per_run):
        return {}
    for run, evals in zip(runs, per_run, strict=True):
        evals[0] = run.summary.before or {}
        last_step = run.summary.steps
        if last_step is not None and run.summary.after:
            evals.setdefault(int(last_step), run.summary.after)
    steps = sorted({step for evals in per_run for step in evals})
    return {
        str(step): {
            key: _mean_std([_as_float(evals.get(step, {}).get(key)) for evals in per_run]) for key in keys
        }
        for step in steps
    }


def summarize_arm(arm: str, runs: list[RunRecord]) -> ArmSummary:
    """Mean ± std over seeds of every reported number for one arm (finished runs only)."""
    finished = [r for r in runs if r.finished]
    after = [r.summary.after or {} for r in finished]
    before = [r.summary.before or {} for r in finished]
    numbers: dict[str, Any] = {
        "seeds": [r.seed for r in finished],
        "n_runs": len(runs),
        "n_finished": len(finished),
        "unfinished": [str(r.path) for r in runs if not r.finished],
    }
    keys = _pass_keys(after + before)
    numbers["after"] = {key: _mean_std([_as_float(e.get(key)) for e in after]) for key in keys}
    numbers["before"] = {key: _mean_std([_as_float(e.get(key)) for e in before]) for key in keys}
    by_level: dict[str, dict[str, Any]] = {}
    for level in _levels(after):
        level_evals = [(e.get("by_level") or {}).get(level, {}) for e in after]
        by_level[level] = {key: _mean_std([_as_float(e.get(key)) for e in level_evals]) for key in keys}
    numbers["after_by_level"] = by_level
    before_by_level: dict[str, dict[str, Any]] = {}
    for level in _levels(before):
        level_evals = [(e.get("by_level") or {}).get(level, {}) for e in before]
        before_by_level[level] = {
            key: _mean_std([_as_float(e.get(key)) for e in level_evals]) for key in keys
        }
    numbers["before_by_level"] = before_by_level

    ratios, h0s, alphas_min, alphas_max, rewards, finals = [], [], [], [], [], []
    per_run = []
    for run in finished:
        h0 = run.h0()
        quarter = run.last_quarter("entropy")
        ratio = float(np.nanmean(quarter) / h0) if quarter.size and np.isfinite(quarter).any() else math.nan
        alpha = run.metrics.get("alpha", np.array([]))
        alpha = alpha[np.isfinite(alpha)]
        reward_q = run.last_quarter("reward")
        reward = float(np.nanmean(reward_q)) if reward_q.size and np.isfinite(reward_q).any() else math.nan
        ratios.append(ratio)
        h0s.append(h0)
        rewards.append(reward)
        finals.append(_as_float(run.summary.final_entropy))
        if alpha.size:
            alphas_min.append(float(alpha.min()))
            alphas_max.append(float(alpha.max()))
        per_run.append(
            {
                "seed": run.seed,
                "path": str(run.path),
                "steps": int(
                    _as_float(run.summary.steps) if run.summary.steps is not None else len(run.steps)
                ),
                "wall_time_s": _as_float(run.summary.wall_time_s),
                "h0": h0,
                "entropy_ratio_last_quarter": ratio,
                "reward_last_quarter": reward,
                "final_entropy": _as_float(run.summary.final_entropy),
                "alpha_min": float(alpha.min()) if alpha.size else None,
                "alpha_max": float(alpha.max()) if alpha.size else None,
                "collapse": bool(ratio < COLLAPSE_RATIO),
                "explosion": bool(ratio > EXPLOSION_RATIO),
                "after": {k: _as_float((run.summary.after or {}).get(k)) for k in keys},
                "before": {k: _as_float((run.summary.before or {}).get(k)) for k in keys},
            }
        )
    numbers["training_by_level"] = _training_by_level(finished)
    during = _during(finished, keys)
    if during:
        numbers["during"] = during
    numbers["h0"] = _mean_std(h0s)
    numbers["entropy_ratio_last_quarter"] = _mean_std(ratios)
    numbers["reward_last_quarter"] = _mean_std(rewards)
    numbers["final_entropy"] = _mean_std(finals)
    numbers["collapsed_runs"] = sum(1 for r in ratios if r < COLLAPSE_RATIO)
    numbers["exploded_runs"] = sum(1 for r in ratios if r > EXPLOSION_RATIO)
    numbers["alpha_range"] = [min(alphas_min), max(alphas_max)] if alphas_min else None
    numbers["runs"] = per_run
    return ArmSummary(arm=arm, runs=runs, numbers=numbers)


# ----------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------


def _fmt(stat: dict[str, Any] | None, digits: int = 3) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    if stat["n"] > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def _fmt_range(values: list[float] | None) -> str:
    if not values:
        return "–"
    return f"[{values[0]:.3g}, {values[1]:.3g}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average that ignores NaNs (the first points average what exists so far)."""
    if window <= 1 or values.size == 0:
        return values
    finite = np.isfinite(values)
    filled = np.where(finite, values, 0.0)
    csum = np.cumsum(filled)
    ccount = np.cumsum(finite.astype(float))
    lagged_sum = np.concatenate([np.zeros(window), csum[:-window]])[: values.size]
    lagged_count = np.concatenate([np.zeros(window), ccount[:-window]])[: values.size]
    count = ccount - lagged_count
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (csum - lagged_sum) / np.maximum(count, 1), np.nan)


def _stack(
    runs: list[RunRecord], column: str, transform: Any = None, window: int = 1
) -> tuple[np.ndarray, np.ndarray] | None:
    """Align the runs of one arm on step and return (steps, [runs, steps]) smoothed per run."""
    series = []
    for run in runs:
        if column not in run.metrics:
            continue
        values = run.metrics[column]
        if transform is not None:
            values = transform(run, values)
        series.append((run.steps, _smooth(values, window)))
    if not series:
        return None
    length = min(len(s) for s, _ in series)
    if length == 0:
        return None
    steps = series[0][0][:length]
    return steps, np.vstack([v[:length] for _, v in series])


# ----------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------


def _arm_colors(plt: Any, n_arms: int) -> Any:
    """One distinct colour per arm: tab10 up to 10 arms, tab20 up to 20, then repeating."""
    cmap = plt.get_cmap("tab10" if n_arms <= 10 else "tab20")
    return lambda i: cmap(i % cmap.N)


def _band_plot(ax: Any, steps: np.ndarray, stacked: np.ndarray, label: str, color: Any) -> None:
    with np.errstate(invalid="ignore"), _quiet_nan_warnings():
        mean = np.nanmean(stacked, axis=0)
        low = np.nanmin(stacked, axis=0)
        high = np.nanmax(stacked, axis=0)
    ax.plot(steps, mean, label=label, color=color, linewidth=1.4)
    if stacked.shape[0] > 1:
        ax.fill_between(steps, low, high, color=color, alpha=0.18, linewidth=0)


class _quiet_nan_warnings:
    """numpy warns on all-NaN slices (e.g. α of clip_higher); those are expected here."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", category=RuntimeWarning)

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


def _legend(ax: Any, **kwargs: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def _plots(arms: list[ArmSummary], out: Path, window: int) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = _arm_colors(plt, len(arms))
    files: dict[str, str] = {}
    finished = [(i, a, [r for r in a.runs if r.finished and r.metrics]) for i, a in enumerate(arms)]

    # 1. entropy / H0 over steps.
    fig, ax = plt.subplots(figsize=(7, 4), dpi=80)
    for i, arm, runs in finished:
        stacked = _stack(runs, "entropy", lambda r, v: v / r.h0(), window)
        if stacked is not None:
            _band_plot(ax, stacked[0], stacked[1], arm.arm, colors(i))
        # The adaptive controllers' target H*/H0 (τ once anchored), thin and dashed in the arm's colour.
        target = _stack(runs, "target_entropy", lambda r, v: v / r.h0(), 1)
        if target is not None and np.isfinite(target[1]).any():
            with _quiet_nan_warnings():
                ax.plot(
                    target[0],
                    np.nanmean(target[1], axis=0),
                    color=colors(i),
                    linestyle="--",
                    linewidth=0.8,
                    alpha=0.8,
                )
    ax.axhline(COLLAPSE_RATIO, color="grey", linestyle=":", linewidth=1)
    ax.axhline(EXPLOSION_RATIO, color="grey", linestyle=":", linewidth=1)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("entropy / H0")
    ax.set_title(
        f"Entropy relative to initial (moving average {window}, band = seed min..max; dashed: target H*/H0)",
        fontsize=9,
    )
    _legend(ax, fontsize=7, ncol=2)
    fig.tight_layout()
    files["entropy"] = "entropy.png"
    fig.savefig(out / files["entropy"])
    plt.close(fig)

    # 2. α over steps (global coefficient; 0 for clip_higher).
    fig, ax = plt.subplots(figsize=(7, 4), dpi=80)
    for i, arm, runs in finished:
        stacked = _stack(runs, "alpha", None, 1)
        if stacked is not None and np.isfinite(stacked[1]).any():
            _band_plot(ax, stacked[0], stacked[1], arm.arm, colors(i))
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_xlabel("step")
    ax.set_ylabel("α (global coefficient)")
    ax.set_title("Entropy coefficient α over steps (band = seed min..max)", fontsize=9)
    _legend(ax, fontsize=7, ncol=2)
    fig.tight_layout()
    files["alpha"] = "alpha.png"
    fig.savefig(out / files["alpha"])
    plt.close(fig)

    # 3. accuracy per difficulty level over steps (training rollouts).
    levels = sorted(
        {
            found
            for _, _, runs in finished
            for r in runs
            for c in r.metrics
            if (found := column_level(c, "acc")) is not None
        }
    )
    if levels:
        ncols = min(3, len(levels))
        nrows = math.ceil(len(levels) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.5 * nrows), dpi=80, squeeze=False)
        for k, level in enumerate(levels):
            ax = axes[k // ncols][k % ncols]
            for i, arm, runs in finished:
                stacked = _stack(runs, level_column("acc", level), None, window)
                if stacked is not None:
                    with _quiet_nan_warnings():
                        ax.plot(
                            stacked[0],
                            np.nanmean(stacked[1], axis=0),
                            color=colors(i),
                            label=arm.arm,
                            linewidth=1.2,
                        )
            ax.set_title(f"level {level}", fontsize=8)
            ax.set_ylim(-0.02, 1.02)
            ax.tick_params(labelsize=7)
        for k in range(len(levels), nrows * ncols):
            axes[k // ncols][k % ncols].axis("off")
        _legend(axes[0][0], fontsize=6)
        fig.suptitle(
            f"Training accuracy per difficulty level (moving average {window}, mean over seeds)", fontsize=9
        )
        fig.tight_layout()
        files["accuracy_by_level"] = "accuracy_by_level.png"
        fig.savefig(out / files["accuracy_by_level"])
        plt.close(fig)

    # 4. pass@k curves on the held-out split after training (and the shared warm start before).
    fig, ax = plt.subplots(figsize=(6, 4), dpi=80)
    plotted_before = False
    for i, arm in enumerate(arms):
        ks = sorted(
            int(key.split("@")[1]) for key, s in arm.numbers["after"].items() if s["mean"] is not None
        )
        if not ks:
            continue
        means = [arm.numbers["after"][pass_key(k)]["mean"] for k in ks]
        stds = [arm.numbers["after"][f"pass@{k}"]["std"] for k in ks]
        ax.errorbar(
            ks,
            means,
            yerr=stds,
            label=arm.arm,
            color=colors(i),
            marker="o",
            markersize=3,
            capsize=2,
            linewidth=1.2,
        )
        if not plotted_before:
            before = [arm.numbers["before"].get(f"pass@{k}", {}).get("mean") for k in ks]
            if all(b is not None for b in before):
                ax.plot(
                    ks, before, color="black", linestyle="--", label="before RL (warm start)", linewidth=1
                )
                plotted_before = True
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k (held-out)")
    ax.set_title("pass@k after training (error bars = std over seeds)", fontsize=9)
    _legend(ax, fontsize=7)
    fig.tight_layout()
    files["pass_at_k"] = "pass_at_k.png"
    fig.savefig(out / files["pass_at_k"])
    plt.close(fig)

    # 5. Held-out pass@1 and pass@k_max over steps, when the runs evaluated during training.
    if any(arm.numbers.get("during") for arm in arms):
        shown = _first_and_last(
            _pass_keys([step for arm in arms for step in arm.numbers.get("during", {}).values()])
        )
        fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 3.6), dpi=80, squeeze=False)
        for ax, key in zip(axes[0], shown, strict=True):
            for i, arm in enumerate(arms):
                during = arm.numbers.get("during", {})
                steps = sorted(int(step) for step in during)
                stats = [during[str(step)].get(key) or {} for step in steps]
                points = [(st, s) for st, s in zip(steps, stats, strict=True) if s.get("mean") is not None]
                if not points:
                    continue
                xs = np.array([st for st, _ in points], dtype=float)
                values = [np.array([v for v in s["values"] if math.isfinite(v)]) for _, s in points]
                ax.plot(
                    xs,
                    [s["mean"] for _, s in points],
                    marker="o",
                    markersize=3,
                    color=colors(i),
                    label=arm.arm,
                )
                ax.fill_between(
                    xs,
                    [v.min() for v in values],
                    [v.max() for v in values],
                    color=colors(i),
                    alpha=0.15,
                    linewidth=0,
                )
            ax.set_xlabel("step")
            ax.set_ylabel(f"{key} (held-out)")
            ax.set_title(f"held-out {key} during training", fontsize=9)
            _legend(ax, fontsize=7)
        fig.tight_layout()
        files["during"] = "during.png"
        fig.savefig(out / files["during"])
        plt.close(fig)
    return files


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------


def _default_window(arms: list[ArmSummary]) -> int:
    lengths = [len(r.steps) for a in arms for r in a.runs if r.metrics]
    if not lengths:
        return 1
    # Per-step reward and entropy are noisy (±0.1 at 32 prompts); ~1/15 of the run, at most 25 steps.
    return int(max(1, min(25, max(lengths) // 15)))


def write_report(
    root: str | Path, out: str | Path | None = None, *, window: int | None = None
) -> dict[str, Any]:
    """Write ``report.md``, ``report.json`` and the PNG plots for the ablation under ``root``.

    Returns the JSON document. ``out`` defaults to ``root``; ``window`` is the moving-average length
    of the over-steps plots (default: about 1/15 of the run, at most 25 steps).
    """
    root = Path(root)
    out = Path(out) if out is not None else root
    out.mkdir(parents=True, exist_ok=True)
    grouped = find_runs(root)
    arms = [summarize_arm(name, runs) for name, runs in grouped.items()]
    window = window if window is not None else _default_window(arms)
    files = _plots(arms, out, window)

    manifest: dict[str, Any] = {}
    if (root / "ablation.json").exists():
        manifest = json.loads((root / "ablation.json").read_text())
    doc: dict[str, Any] = {
        "root": str(root),
        "definitions": {
            "h0": "summary.json h0 when finite, else the first logged step's mean entropy",
            "entropy_ratio_last_quarter": "mean over the last quarter of logged steps of entropy / H0",
            "collapse": f"entropy_ratio_last_quarter < {COLLAPSE_RATIO}",
            "explosion": f"entropy_ratio_last_quarter > {EXPLOSION_RATIO}",
            "std": "sample standard deviation over seeds (ddof=1); 0 with one seed",
            "smoothing_window": window,
        },
        "ablation": manifest,
        "plots": files,
        "arms": {a.arm: a.numbers for a in arms},
    }
    (out / "report.json").write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    (out / "report.md").write_text(_markdown(arms, files, window, manifest))
    return doc


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _markdown(arms: list[ArmSummary], files: dict[str, str], window: int, manifest: dict[str, Any]) -> str:
    keys = sorted(
        {key for a in arms for key, s in a.numbers["after"].items() if s["mean"] is not None},
        key=lambda k: int(k.split("@")[1]),
    )
    lines = ["# Ablation report", ""]
    if manifest:
        if manifest.get("command"):
            lines += [f"Command: `{manifest['command']}`", ""]
        lines += [
            f"Base config: `{manifest.get('base_config', '?')}`; seeds: {manifest.get('seeds', '?')}; "
            f"overrides for all arms: {manifest.get('set') or 'none'}.",
            "",
        ]
    lines += [
        "Held-out evaluation after training; mean ± std (sample std) over seeds. "
        f"`H/H0 (last ¼)` is the mean of entropy/H0 over the last quarter of training steps; "
        f"collapse = H/H0 < {COLLAPSE_RATIO}, explosion = H/H0 > {EXPLOSION_RATIO} (counted in seeds). "
        "α range is the min..max of the logged global coefficient over all steps and seeds.",
        "",
        "## Summary per arm",
        "",
    ]
    header = ["arm", "seeds", *keys, "H/H0 (last ¼)", "collapse", "explosion", "α range", "reward (last ¼)"]
    rows = []
    for a in arms:
        n = a.numbers
        seeds = f"{n['n_finished']}/{n['n_runs']}"
        rows.append(
            [
                f"`{a.arm}`",
                seeds,
                *[_fmt(n["after"].get(k)) for k in keys],
                _fmt(n["entropy_ratio_last_quarter"], 2),
                f"{n['collapsed_runs']}/{n['n_finished']}",
                f"{n['exploded_runs']}/{n['n_finished']}",
                _fmt_range(n["alpha_range"]),
                _fmt(n["reward_last_quarter"]),
            ]
        )
    lines += [_table(header, rows), ""]
    before = next((a.numbers["before"] for a in arms if a.numbers["n_finished"]), None)
    if before:
        lines += [
            "Before RL (the shared warm-start checkpoint, same evaluation): "
            + ", ".join(f"{k} = {_fmt(before.get(k))}" for k in keys if k in before),
            "",
        ]
    levels = _sorted_levels(level for a in arms for level in a.numbers["after_by_level"])
    if len(levels) > 1:  # with one level these tables repeat the summary
        for key in keys:
            lines += [f"## {key} per difficulty level (held-out, after training)", ""]
            rows = []
            for a in arms:
                by_level = a.numbers["after_by_level"]
                rows.append([f"`{a.arm}`", *[_fmt(by_level.get(level, {}).get(key)) for level in levels]])
            before_levels: dict[str, Any] = next(
                (a.numbers["before_by_level"] for a in arms if a.numbers["before_by_level"]), {}
            )
            if before_levels:
                rows.append(["before RL", *[_fmt(before_levels.get(level, {}).get(key)) for level in levels]])
            lines += [_table(["arm", *[f"level {lv}" for lv in levels]], rows), ""]
    train_levels = _sorted_levels(level for a in arms for level in a.numbers.get("training_by_level", {}))
    if train_levels:
        lines += [
            "## Training entropy and accuracy per difficulty level",
            "",
            f"Entropy in nats over the first {START_STEPS} steps → over the last quarter, and training "
            "accuracy over the last quarter (sampled rollouts, not the held-out split).",
            "",
        ]
        rows = []
        for a in arms:
            by_level = a.numbers.get("training_by_level", {})
            row = [f"`{a.arm}`"]
            for level in train_levels:
                t = by_level.get(level)
                if not t:
                    row += ["–", "–"]
                    continue
                row += [
                    f"{_fmt(t['entropy_start'], 2)} → {_fmt(t['entropy_last_quarter'], 2)}",
                    _fmt(t["accuracy_last_quarter"], 2),
                ]
            rows.append(row)
        header = ["arm"]
        for level in train_levels:
            header += [f"level {level} entropy", f"level {level} acc"]
        lines += [_table(header, rows), ""]
    during_steps = sorted({int(step) for a in arms for step in a.numbers.get("during", {})})
    if during_steps:
        for key in _first_and_last(keys):
            lines += [
                f"## Held-out {key} during training",
                "",
                "At the intermediate evaluations (`eval.every`); step 0 is the warm start.",
                "",
            ]
            rows = []
            for a in arms:
                during = a.numbers.get("during", {})
                rows.append(
                    [f"`{a.arm}`", *[_fmt(during.get(str(step), {}).get(key)) for step in during_steps]]
                )
            lines += [_table(["arm", *[f"step {step}" for step in during_steps]], rows), ""]
    lines += ["## Plots", ""]
    captions = {
        "entropy": f"Entropy / H0 over steps (moving average {window}; band = min..max over seeds)",
        "alpha": "Global entropy coefficient α over steps",
        "accuracy_by_level": f"Training accuracy per difficulty level (moving average {window})",
        "pass_at_k": "Held-out pass@k after training",
        "during": "Held-out pass@k during training (band = min..max over seeds)",
    }
    for key, name in files.items():
        lines += [f"![{captions.get(key, key)}]({name})", ""]
    lines += ["## Every run", ""]
    header = ["arm", "seed", "steps", *keys, "H0", "H/H0 (last ¼)", "α min", "α max", "wall s"]
    rows = []
    for a in arms:
        for run in a.numbers["runs"]:
            rows.append(
                [
                    f"`{a.arm}`",
                    str(run["seed"]),
                    str(run["steps"]),
                    *[f"{run['after'].get(k, math.nan):.3f}" for k in keys],
                    f"{run['h0']:.3f}",
                    f"{run['entropy_ratio_last_quarter']:.2f}",
                    "–" if run["alpha_min"] is None else f"{run['alpha_min']:.3g}",
                    "–" if run["alpha_max"] is None else f"{run['alpha_max']:.3g}",
                    f"{run['wall_time_s']:.0f}",
                ]
            )
        for path in a.numbers["unfinished"]:
            rows.append([f"`{a.arm}`", Path(path).name, "unfinished", *["–"] * (len(header) - 3)])
    lines += [_table(header, rows), ""]
    return "\n".join(lines)
