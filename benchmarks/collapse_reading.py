"""Read an ablation directory's runs step by step, finished or not: does the entropy stay in the band
around H* = τ·H0, and where is α? Writes <dir>/reading.{json,md} (tables; `entropyctl report` covers
finished runs only).

Per run: steps done; H0 (the controller's, where the run logs one; else the first reading); the
50-step moving average of the entropy over H0 every 250 steps; the first
step at which that average is within ±20 % of τ·H0 ("in band") and the share of later steps in band;
the share of steps with α at a bound (≤ alpha_min or ≥ alpha_max of the run's config, after the
first in-band step and over all steps); α's range; held-out pass@1 / pass@8 at every evaluation.
A second table splits the in-band share at step ``--settled-from`` (1000): the approach, where the
entropy first falls through H* and the controller has to climb from a wound-down α, and the settled
run after it, with the spread of log10 α there (how far α swings while holding), the highest
50-step average over H* there (a burst above the band) and the largest fall of the 50-step average of
the training accuracy there from its running maximum (what a burst cost while it lasted).
Two more tables, over the finished runs: per arm the mean ± std over seeds (in band, by phase, H/H0
over the last quarter, held-out pass@1 / pass@8 of the last evaluation and pass@1 averaged over the
last three evaluations — a burst above the band can fall against the last one alone), and each arm minus
``--base`` (default ``aer``) paired by seed — the mean of the per-seed differences ± its standard
error (std/√n) — over the seeds both arms finished.

    python benchmarks/collapse_reading.py benchmarks/ablation_collapse_v2 [--tau 0.4] [--base aer]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import re
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from entropyctl.controllers.band import WINDOW, BandReading, alpha_at_bound, moving_average, read_band
from entropyctl.experiments.stats import mean_std, paired_difference


def alpha_bounds(config: dict[str, Any]) -> tuple[float, float]:
    controller = config.get("controller") or {}
    update = controller.get("update")
    if isinstance(update, dict) and "alpha_min" in update:
        return float(update["alpha_min"]), float(update["alpha_max"])
    if controller.get("name") == "fixed":
        alpha = float(controller.get("alpha", 0.0))
        return alpha, alpha
    return float(controller.get("alpha_min", 0.0)), float(controller.get("alpha_max", math.inf))


EVAL_LINE = re.compile(r"eval (\S+): (.*?) \(seed")


def evals_from_log(path: Path) -> dict[str, dict[str, float]]:
    """A running run's held-out evaluations, from its train.log (summary.json gets them at the end)."""
    if not path.exists():
        return {}
    evals: dict[str, dict[str, float]] = {}
    for match in EVAL_LINE.finditer(path.read_text(errors="replace")):
        evals[match.group(1)] = {
            k: float(v) for k, v in (item.split("=") for item in match.group(2).split(", "))
        }
    return evals


def noise_ceiling(entropy: list[float], start: int, half: int = 10, draws: int = 4000) -> tuple[float, float]:
    """(reading noise, ceiling) from step ``start`` on. The reading noise is the std of
    r_t = H_t / (mean of H over t ± ``half``) − 1, the step-to-step scatter around the local level
    (scaled by √(n/(n − 1)), n = 2·half + 1, for the local mean's own share of it). The ceiling is
    the share in band a controller holding the true entropy exactly on H* would show with this
    noise: WINDOW residuals drawn at random (independent readings; a fixed seed) average within
    ±20 % in that share of ``draws`` windows. The band cannot be met more often than that."""
    n = 2 * half + 1
    residual = []
    for t in range(max(start, half), len(entropy) - half):
        level = statistics.fmean(entropy[t - half : t + half + 1])
        if level > 0:
            residual.append((entropy[t] / level - 1.0) * math.sqrt(n / (n - 1)))
    if len(residual) < WINDOW:
        return math.nan, math.nan
    rng = random.Random(0)
    inside = sum(abs(statistics.fmean(rng.choices(residual, k=WINDOW))) <= 0.2 for _ in range(draws))
    return statistics.pstdev(residual), inside / draws


def phase_shares(in_band: Any, first: int | None, split: int) -> tuple[float, float]:
    """The in-band share over [first, split) and over [split, end) (NaN where a span is empty)."""
    if first is None:
        return math.nan, math.nan
    early, late = in_band[first:split], in_band[max(first, split) :]
    return (float(early.mean()) if early.size else math.nan, float(late.mean()) if late.size else math.nan)


def settled_bursts(average: Any, accuracy: list[float], settled_from: int) -> tuple[float, float]:
    """From step ``settled_from`` on: the highest 50-step average of the entropy (NaN if none), and
    the largest fall of the 50-step average of the training accuracy below its running maximum (full
    windows only)."""
    late = [float(a) for a in average[settled_from:] if math.isfinite(float(a))]
    late_accuracy = moving_average(accuracy)[max(settled_from, WINDOW - 1) :]
    fall = (
        float((np.maximum.accumulate(late_accuracy) - late_accuracy).max())
        if late_accuracy.size
        else math.nan
    )
    return (max(late) if late else math.nan), fall


def run_band(rows: list[dict[str, str]], tau: float) -> tuple[float, BandReading]:
    """H0 and the band reading of a run's metrics rows against τ·H0, full windows only. H0 is the
    controller's own where it logs one (the mean of its anchor.steps first readings), else the first
    reading (a run without a target: no bonus)."""
    entropy = [float(r["entropy"]) for r in rows]
    logged = [float(r["h0"]) for r in rows if r.get("h0") not in (None, "", "nan")]
    h0 = logged[-1] if logged and math.isfinite(logged[-1]) else entropy[0]
    return h0, read_band(entropy, tau * h0, start=WINDOW - 1)


def read_run(run: Path, tau: float, settled_from: int = 1000) -> dict[str, Any]:
    with (run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    entropy = [float(r["entropy"]) for r in rows]
    alpha = [float(r["alpha"]) for r in rows]
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
    config = yaml.safe_load((run / "config.yaml").read_text())
    h0, band = run_band(rows, tau)
    first = band.first_in_band
    low, high = alpha_bounds(config)
    at_bound = alpha_at_bound(alpha, low, high)
    evals = summary.get("evals") or evals_from_log(run / "train.log")
    noise, ceiling = noise_ceiling(entropy, first if first is not None else len(entropy))
    approach, settled = phase_shares(band.in_band, first, settled_from)
    late_alpha = [math.log10(a) for a in alpha[settled_from:] if a > 0]
    burst, accuracy_fall = settled_bursts(band.average, [float(r["accuracy"]) for r in rows], settled_from)
    return {
        "run": f"{run.parent.name}/{run.name}",
        "status": summary.get("status"),
        "steps": len(entropy),
        "h0": h0,
        "average_over_h0": {str(i + 1): float(band.average[i]) / h0 for i in range(249, len(entropy), 250)},
        "first_in_band": first,
        "in_band_share_after": band.in_band_share if first is not None else math.nan,
        "reading_noise_after": noise,
        "in_band_ceiling_after": ceiling,
        "alpha_at_bound_after": band.share_after_first(at_bound),
        "alpha_at_bound_all": float(at_bound.mean()) if at_bound.size else math.nan,
        "alpha_range": [min(alpha), max(alpha)] if alpha else None,
        "settled_from": settled_from,
        "in_band_before_settled": approach,
        "in_band_settled": settled,
        "log10_alpha_std_settled": statistics.pstdev(late_alpha) if len(late_alpha) > 1 else math.nan,
        "largest_average_over_target_settled": burst / (tau * h0),
        "largest_accuracy_fall_settled": accuracy_fall,
        # NaN-ignoring (a step without tokens logs NaN), as the report's reading
        "last_quarter_over_h0": float(np.nanmean(entropy[-max(len(entropy) // 4, 1) :])) / h0,
        "evals": {name: {k: e[k] for k in ("pass@1", "pass@8") if k in e} for name, e in evals.items()},
    }


#: the per-arm numbers compared (key in read_run's record or "pass@1"/"pass@8" of the last evaluation)
ARM_KEYS = {
    "in_band_share_after": "in band after first reaching it",
    "in_band_before_settled": "… before the split",
    "in_band_settled": "… from the split",
    "last_quarter_over_h0": "H/H0, last quarter",
    "pass@1": "held-out pass@1 (last evaluation)",
    "pass@8": "pass@8",
    "pass@1 last 3": "pass@1, mean of the last 3 evaluations",
    "pass@1 step 500": "pass@1 at step 500",
}
#: how many of the last evaluations the steadier pass@1 averages (a burst above the band can fall
#: against the last one alone)
LAST_EVALUATIONS = 3
#: the step of the early evaluation the arm tables compare (the long studies evaluate every 500 steps)
EARLY_STEP = 500


def arm_value(reading: dict[str, Any], key: str) -> float:
    evals = list(reading["evals"].values())
    if key in ("pass@1", "pass@8"):
        return float(evals[-1].get(key, math.nan)) if evals else math.nan
    if key == "pass@1 last 3":
        last = [float(e.get("pass@1", math.nan)) for e in evals[-LAST_EVALUATIONS:]]
        return statistics.fmean(last) if len(last) == LAST_EVALUATIONS else math.nan
    if key == "pass@1 step 500":  # what a candidate costs or gains early (a study evaluating every 500)
        return float(reading["evals"].get(f"step_{EARLY_STEP}", {}).get("pass@1", math.nan))
    return float(reading[key])


def by_arm(readings: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """The finished runs by arm slug and seed."""
    arms: dict[str, dict[int, dict[str, Any]]] = {}
    for r in readings:
        if r["status"] == "finished":
            arm, seed = r["run"].rsplit("/seed", 1)
            arms.setdefault(arm, {})[int(seed)] = r
    return arms


def arm_tables(readings: list[dict[str, Any]], base: str) -> tuple[dict[str, Any], list[str]]:
    """Per arm, mean ± std over its finished seeds; each other arm minus ``base`` paired by seed."""
    arms = by_arm(readings)
    summary: dict[str, Any] = {"base": base, "arms": {}, "paired": {}}
    digits = {"pass@1": 3, "pass@8": 3, "pass@1 last 3": 3, "pass@1 step 500": 3, "last_quarter_over_h0": 3}
    header = ["| arm | seeds | " + " | ".join(ARM_KEYS.values()) + " |", "|---|---|" + "---|" * len(ARM_KEYS)]
    lines = ["Per arm, mean ± std over its finished seeds:", "", *header]
    for arm, seeds in sorted(arms.items()):
        entry = {k: mean_std([arm_value(seeds[s], k) for s in sorted(seeds)]) for k in ARM_KEYS}
        summary["arms"][arm] = {"seeds": sorted(seeds), **{k: list(v) for k, v in entry.items()}}
        cells = [f"{m:.{digits.get(k, 2)}f} ± {sd:.{digits.get(k, 2)}f}" for k, (m, sd) in entry.items()]
        lines.append(f"| `{arm}` | {len(seeds)} | " + " | ".join(cells) + " |")
    if base in arms and len(arms) > 1:
        lines += [
            "",
            f"Each arm − `{base}`, paired by seed (mean of the differences ± its standard error):",
            "",
        ]
        lines += header
        for arm, seeds in sorted(arms.items()):
            common = sorted(set(seeds) & set(arms[base]))
            if arm == base or len(common) < 2:
                continue
            entry = {
                k: paired_difference(
                    [arm_value(arms[base][s], k) for s in common], [arm_value(seeds[s], k) for s in common]
                )
                for k in ARM_KEYS
            }
            summary["paired"][arm] = {"seeds": common, **{k: list(v) for k, v in entry.items()}}
            cells = [f"{m:+.{digits.get(k, 2)}f} ± {se:.{digits.get(k, 2)}f}" for k, (m, se) in entry.items()]
            lines.append(f"| `{arm}` | {len(common)} | " + " | ".join(cells) + " |")
    return summary, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--tau", type=float, default=0.4)
    parser.add_argument(
        "--settled-from", type=int, default=1000, help="the step that splits the second table"
    )
    parser.add_argument("--base", default="aer", help="the arm the others are paired with (default aer)")
    args = parser.parse_args()
    runs = sorted(p.parent for p in args.dir.glob("*/seed*/metrics.csv"))
    readings = [read_run(run, args.tau, args.settled_from) for run in runs]
    summary, arm_lines = arm_tables(readings, args.base)
    (args.dir / "reading.json").write_text(
        json.dumps({"tau": args.tau, "window": WINDOW, "runs": readings, "summary": summary}, indent=1)
    )
    marks = sorted({int(k) for r in readings for k in r["average_over_h0"]})
    lines = [
        f"Moving average ({WINDOW} steps) of the entropy over H0 at each step; band = ±20 % of {args.tau}·H0.",
        "Noise ceiling: the share in band a controller holding the true entropy exactly on H* would show",
        "with the run's own reading noise (std of each reading around its 21-step local mean).",
        "",
        "| run | status | steps | H0 | "
        + " | ".join(f"{m}" for m in marks)
        + " | first in band | in band after | noise ceiling | reading noise | α at bound (after / all) | α range |",
        "|---|---|---|---|" + "---|" * len(marks) + "---|---|---|---|---|---|",
    ]
    for r in readings:
        cells = [f"{r['average_over_h0'].get(str(m), math.nan):.2f}" for m in marks]
        low, high = r["alpha_range"] or (math.nan, math.nan)
        lines.append(
            f"| `{r['run']}` | {r['status']} | {r['steps']} | {r['h0']:.3f} | "
            + " | ".join(cells)
            + f" | {r['first_in_band']} | {r['in_band_share_after']:.2f} | {r['in_band_ceiling_after']:.2f} | "
            f"{r['reading_noise_after']:.2f} | {r['alpha_at_bound_after']:.2f} / {r['alpha_at_bound_all']:.2f} | {low:.1e} … {high:.1e} |"
        )
    lines += [
        "",
        f"In band by phase: from the first in-band step to step {args.settled_from}, and from step "
        f"{args.settled_from} on; the spread (std) of log10 α from step {args.settled_from} on.",
        "",
        f"| run | in band, first … {args.settled_from} | in band, {args.settled_from} … end | std of log10 α, {args.settled_from} … end "
        "| highest average / H* | largest fall of training accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for r in readings:
        lines.append(
            f"| `{r['run']}` | {r['in_band_before_settled']:.2f} | {r['in_band_settled']:.2f} | "
            f"{r['log10_alpha_std_settled']:.2f} | {r['largest_average_over_target_settled']:.2f} | "
            f"{r['largest_accuracy_fall_settled']:.2f} |"
        )
    lines += ["", "Held-out pass@1 / pass@8 at each evaluation:", ""]
    for r in readings:
        evals = ", ".join(
            f"{name} {e.get('pass@1', math.nan):.3f} / {e.get('pass@8', math.nan):.3f}"
            for name, e in r["evals"].items()
        )
        lines.append(f"- `{r['run']}`: {evals or 'none yet'}")
    lines += ["", *arm_lines]
    (args.dir / "reading.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
