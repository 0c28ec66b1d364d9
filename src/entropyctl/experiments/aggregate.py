"""Reading an ablation's run directories and aggregating them per arm (mean ± std over seeds)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from entropyctl.controllers.band import BandHealth, band_health, moving_average
from entropyctl.controllers.registry import parse_controller_config
from entropyctl.trainer.run_dir import (
    RunDirError,
    Summary,
    column_level,
    float_or_nan,
    level_column,
    pass_k,
    pass_key,
    read_metrics,
    read_summary,
)
from entropyctl.validation import ConfigError

__all__ = [
    "COLLAPSE_RATIO",
    "EXPLOSION_RATIO",
    "ArmSummary",
    "ReportError",
    "RunRecord",
    "find_runs",
    "load_run",
    "pooled_seeds",
    "run_band",
    "summarize_arm",
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
        value = float_or_nan(self.summary.h0)
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


def load_run(run_dir: str | Path, arm: str | None = None) -> RunRecord:
    """Read one run directory (``config.yaml``, ``metrics.csv``, ``summary.json``); a ``ReportError``
    when it holds neither ``summary.json`` nor ``metrics.csv`` (a mistyped path reads as no run, not
    as a run without metrics)."""
    import yaml

    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    metrics_path = run_dir / "metrics.csv"
    config_path = run_dir / "config.yaml"
    if not (summary_path.exists() or metrics_path.exists()):
        what = (
            "no such directory" if not run_dir.exists() else "it holds neither summary.json nor metrics.csv"
        )
        raise ReportError(f"{run_dir}: not a run directory ({what})")
    try:
        summary = read_summary(summary_path)
        metrics = read_metrics(metrics_path) if metrics_path.exists() else {}
    except RunDirError as err:
        raise ReportError(str(err)) from None
    _check_evaluations(summary, summary_path)
    config: dict[str, Any] = {}
    if config_path.exists():
        try:
            config = yaml.safe_load(config_path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ReportError(
                f"{config_path}: unreadable ({type(err).__name__}); restore or remove the run"
            ) from None
        if not isinstance(config, dict):
            raise ReportError(f"{config_path}: not a run config (a {type(config).__name__})")
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


def _check_evaluations(summary: Any, path: Path) -> None:
    """The pass@k records the report reads: mappings, their ``by_level`` / ``by_set`` mappings of mappings."""
    records = {"before": summary.before, "after": summary.after}
    evals = summary.evals or {}
    records.update({f"evals.{tag}": record for tag, record in evals.items()})
    for where, record in records.items():
        groups = [] if not isinstance(record, dict) else [record.get("by_level"), record.get("by_set")]
        if record is not None and not (
            isinstance(record, dict)
            and all(
                g is None or (isinstance(g, dict) and all(isinstance(v, dict) for v in g.values()))
                for g in groups
            )
        ):
            raise ReportError(
                f"{path}: {where} is not a pass@k record (by_level / by_set must map names to records)"
            )


def read_manifest(path: Path) -> dict[str, Any]:
    """``ablation.json``, checked as far as the report reads it (each arm a mapping with ``label`` and
    ``slug``); a :class:`ReportError` naming the file otherwise."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ReportError(
            f"{path}: unreadable ({err}); restore it, or delete it to report every run found"
        ) from None
    arms = manifest.get("arms", []) if isinstance(manifest, dict) else None
    if not isinstance(arms, list) or not all(
        isinstance(arm, dict) and isinstance(arm.get("label"), str) and isinstance(arm.get("slug"), str)
        for arm in arms
    ):
        raise ReportError(f"{path}: not an ablation manifest (expected arms with a label and a slug each)")
    return {**manifest, "arms": arms}


def find_runs(root: str | Path) -> dict[str, list[RunRecord]]:
    """All runs under an ablation directory, grouped by arm, in the ablation's arm order.

    The arm order and labels come from ``ablation.json`` (written by ``entropyctl ablate``) when
    present. Otherwise every directory holding ``summary.json`` or ``metrics.csv`` is a run: one named
    ``seed<N>`` belongs to the arm its parent directory names (the layout ``ablate`` writes; the
    parent's path under ``root``), any other is an arm of its own, named by its path under ``root`` (a folder of ``entropyctl train`` runs is
    not pooled into one arm across controllers).
    """
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"{root}: not a directory; expected an ablation output directory")
    manifest_path = root / "ablation.json"
    arms: dict[str, list[RunRecord]] = {}
    if manifest_path.exists():
        manifest = read_manifest(manifest_path)
        for arm in manifest["arms"]:
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
        if run_dir == root:
            arm = root.name
        elif re.fullmatch(r"seed\d+", run_dir.name):
            arm = run_dir.parent.relative_to(root).as_posix() if run_dir.parent != root else root.name
        else:
            arm = run_dir.relative_to(root).as_posix()
        arms.setdefault(arm, []).append(load_run(run_dir, arm=arm))
    return arms


_Run = TypeVar("_Run")


def pooled_seeds(folders: Sequence[Path], slug: str, read: Callable[[Path], _Run | None]) -> dict[int, _Run]:
    """One arm's runs pooled over study ``folders`` (one config and warm start that ran other seeds):
    ``read`` of each ``<folder>/<slug>/seed<N>``, by seed N, in seed order, leaving out the runs it
    returns None for. A seed in two folders is an error (pool distinct seeds only)."""
    found: dict[int, _Run] = {}
    for folder in folders:
        for run in sorted((folder / slug).glob("seed*"), key=_seed_key):
            reading = read(run)
            if reading is None:
                continue
            seed = _seed_key(run)[0]
            if seed in found:
                raise ReportError(f"{slug}/{run.name} is in two folders: pool distinct seeds only")
            found[seed] = reading
    return dict(sorted(found.items()))


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


def _sets(evals: list[dict[str, Any]]) -> list[str]:
    """The held-out sets' names in the order the evaluations list them."""
    return list(dict.fromkeys(str(name) for e in evals for name in (e.get("by_set") or {})))


def _per_group(
    evals: list[dict[str, Any]], field: str, groups: list[str], keys: list[str]
) -> dict[str, dict[str, Any]]:
    """Mean ± std over runs of each pass@k of each group of ``field`` (``by_level``, ``by_set``)."""
    out: dict[str, dict[str, Any]] = {}
    for group in groups:
        entries = [(e.get(field) or {}).get(group, {}) for e in evals]
        out[group] = {key: _mean_std([float_or_nan(e.get(key)) for e in entries]) for key in keys}
    return out


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
            key: _mean_std([float_or_nan(evals.get(step, {}).get(key)) for evals in per_run]) for key in keys
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
    numbers["after"] = {key: _mean_std([float_or_nan(e.get(key)) for e in after]) for key in keys}
    numbers["before"] = {key: _mean_std([float_or_nan(e.get(key)) for e in before]) for key in keys}
    numbers["after_by_level"] = _per_group(after, "by_level", _levels(after), keys)
    numbers["before_by_level"] = _per_group(before, "by_level", _levels(before), keys)
    after_sets, before_sets = _sets(after), _sets(before)
    if after_sets or before_sets:  # runs with several held-out sets (others' reports keep their keys)
        numbers["after_by_set"] = _per_group(after, "by_set", after_sets, keys)
        numbers["before_by_set"] = _per_group(before, "by_set", before_sets, keys)

    per_run = [_run_numbers(run, keys) for run in finished]
    ratios = [r["entropy_ratio_last_quarter"] for r in per_run]
    numbers["training_by_level"] = _training_by_level(finished)
    during = _during(finished, keys)
    if during:
        numbers["during"] = during
    numbers["h0"] = _mean_std([r["h0"] for r in per_run])
    numbers["entropy_ratio_last_quarter"] = _mean_std(ratios)
    numbers["reward_last_quarter"] = _mean_std([r["reward_last_quarter"] for r in per_run])
    numbers["final_entropy"] = _mean_std([r["final_entropy"] for r in per_run])
    numbers["collapsed_runs"] = sum(1 for r in ratios if r < COLLAPSE_RATIO)
    numbers["exploded_runs"] = sum(1 for r in ratios if r > EXPLOSION_RATIO)
    alphas_min = [r["alpha_min"] for r in per_run if r["alpha_min"] is not None]
    alphas_max = [r["alpha_max"] for r in per_run if r["alpha_max"] is not None]
    numbers["alpha_range"] = [min(alphas_min), max(alphas_max)] if alphas_min else None
    numbers["runs"] = per_run
    numbers["band"] = _band_numbers([r["band"] for r in per_run if r["band"] is not None])
    return ArmSummary(arm=arm, runs=runs, numbers=numbers)


def _run_numbers(run: RunRecord, keys: list[str]) -> dict[str, Any]:
    """One finished run's entry in the report's ``runs`` (the arm's numbers are read off these)."""
    h0 = run.h0()
    quarter = run.last_quarter("entropy")
    ratio = float(np.nanmean(quarter) / h0) if quarter.size and np.isfinite(quarter).any() else math.nan
    alpha = run.metrics.get("alpha", np.array([]))
    alpha = alpha[np.isfinite(alpha)]
    reward_q = run.last_quarter("reward")
    reward = float(np.nanmean(reward_q)) if reward_q.size and np.isfinite(reward_q).any() else math.nan
    band = run_band(run)
    return {
        "seed": run.seed,
        "path": str(run.path),
        "steps": int(float_or_nan(run.summary.steps) if run.summary.steps is not None else len(run.steps)),
        "wall_time_s": float_or_nan(run.summary.wall_time_s),
        "h0": h0,
        "entropy_ratio_last_quarter": ratio,
        "reward_last_quarter": reward,
        "final_entropy": float_or_nan(run.summary.final_entropy),
        "alpha_min": float(alpha.min()) if alpha.size else None,
        "alpha_max": float(alpha.max()) if alpha.size else None,
        "collapse": bool(ratio < COLLAPSE_RATIO),
        "explosion": bool(ratio > EXPLOSION_RATIO),
        "after": {k: float_or_nan((run.summary.after or {}).get(k)) for k in keys},
        "before": {k: float_or_nan((run.summary.before or {}).get(k)) for k in keys},
        "band": band.as_dict() if band is not None else None,
    }


def run_band(run: RunRecord) -> BandHealth | None:
    """How ``run`` held its entropy band (controllers.band): None for a run without a target."""
    target = run.metrics.get("target_entropy")
    entropy = run.metrics.get("entropy")
    if target is None or entropy is None:
        return None
    return band_health(run.steps.astype(int), entropy, target, run.metrics.get("alpha"), _alpha_bounds(run))


def _alpha_bounds(run: RunRecord) -> tuple[float, float] | None:
    """The α bounds of the run's controller config (None where it does not parse, e.g. a plugin that
    is not installed here, or has no bounds)."""
    try:
        controller = parse_controller_config(run.config.get("controller"))
    except ConfigError:
        return None
    bounds = getattr(controller, "alpha_reading_bounds", None)
    return (float(bounds[0]), float(bounds[1])) if bounds is not None else None


def _band_numbers(bands: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Per arm: the band readings of its runs with a target, averaged (shares) and counted (settling)."""
    if not bands:
        return None
    reached = [b for b in bands if b["first_in_band"] is not None]

    def share(key: str) -> dict[str, Any]:
        return _mean_std([math.nan if b[key] is None else float(b[key]) for b in reached])

    return {
        "runs": len(bands),
        "reached": len(reached),
        "first_in_band": _mean_std([float(b["first_in_band"]) for b in reached]),
        "in_band": share("in_band"),
        "below": share("below"),
        "above": share("above"),
        "alpha_at_bound": share("alpha_at_bound"),
        "settled_in_first_half": sum(1 for b in bands if b["settled_in_first_half"]),
    }


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
        series.append((run.steps, moving_average(values, window)))
    if not series:
        return None
    length = min(len(s) for s, _ in series)
    if length == 0:
        return None
    steps = series[0][0][:length]
    return steps, np.vstack([v[:length] for _, v in series])
