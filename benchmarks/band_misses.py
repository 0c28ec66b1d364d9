"""Where the steps outside AER's band go, read off the committed runs.

The issue's target counts the steps, from the first one whose 50-step average entropy is within ±20 % of
H*, on which it still is (``entropyctl.controllers.band.read_band``). This reading splits the steps it
misses three ways:

* **below** the band: the entropy short of H* — what a larger bonus, sooner, could fix;
* **above** the band **after a bonus**: α reached the decade where the bonus acts (``ACTING`` = 0.01,
  docs/robustness.md, "The bonus acts over about one decade of α") within the ``LOOKBACK`` steps before
  — the bonus (an overshoot of α) can have put the entropy there;
* **above** the band **with no bonus in reach**: α stayed below that decade for the ``LOOKBACK`` steps
  before — the policy's entropy is above H* on its own, and a controller that can only add an entropy
  bonus (AER's coefficient is ≥ 0) has nothing to take away.

``LOOKBACK`` = 200 steps covers how long the runs' entropy stays above the band after α has peaked (the
above-band episodes of the defaults' 2000–3000-step runs that follow a peak of α last 21–181 steps).
The same split is read on the runs without a bonus (``fixed:alpha=0``, every step above the band is
then "no bonus in reach") and with a constant α (0.01 and above: every step above is "after a
bonus"; 0.003: "no bonus in reach"), against the 0.4·H0 AER's defaults set on the same seed (H0 the
run's first reading, as AER's anchor takes it). Only finished runs are read; shares are of the steps
from the first in-band one, mean ± sample std over runs. Writes benchmarks/results/band_misses.{md,json}.

    python benchmarks/band_misses.py
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from settling import BAND_TAU, finished_runs, logged_target  # noqa: E402

from entropyctl.controllers.band import HALF_WIDTH, WINDOW, read_band  # noqa: E402
from entropyctl.experiments.stats import mean_std  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: α from which the bonus moves the entropy by more than the seed spread (the robustness sweep's fixed arms)
ACTING = 0.01
#: steps an above-band step looks back for α in the acting decade
LOOKBACK = 200
L2 = "benchmarks/robustness/level2"
L2S = "benchmarks/robustness/level2_seeds"
L12S = "benchmarks/robustness/levels12_seeds"
#: task → arm → the run folders (globs); the arms of one task share warm start and seeds where they can
TASKS: dict[str, dict[str, list[str]]] = {
    "collapse v5 (3000 steps)": {
        "AER defaults": [
            "benchmarks/ablation_collapse_v5/aer/seed*",
            "benchmarks/ablation_collapse_v5_seeds/aer/seed*",
        ],
        "no bonus": ["benchmarks/ablation_collapse_v5/fixed_alpha=0/seed*"],
        "fixed α = 0.003": ["benchmarks/ablation_collapse_v5_fixed/fixed_alpha=0.003/seed*"],
        "fixed α = 0.01": ["benchmarks/ablation_collapse_v5_fixed/fixed_alpha=0.01/seed*"],
        "fixed α = 0.03": ["benchmarks/ablation_collapse_v5_fixed/fixed_alpha=0.03/seed*"],
    },
    "levels 1–2 (2000 steps)": {
        "AER defaults": ["benchmarks/settling_levels12/aer/seed*"],
        "no bonus": ["benchmarks/settling_levels12/fixed_alpha=0/seed*"],
    },
    "level 2 (600 steps)": {
        "AER defaults": [f"{L2}/aer/seed*", f"{L2S}/aer/seed*"],
        "no bonus": [f"{L2}/fixed_alpha=0/seed*", f"{L2S}/fixed_alpha=0/seed*"],
        "fixed α = 0.01": [f"{L2}/fixed_alpha=0.01/seed*", f"{L2S}/fixed_alpha=0.01/seed*"],
    },
    "levels 1–2 (600 steps)": {
        "AER defaults": [f"{L12S}/aer/seed*"],
        "no bonus": [f"{L12S}/fixed_alpha=0/seed*"],
        "fixed α = 0.01": [f"{L12S}/fixed_alpha=0.01/seed*"],
    },
    "main job (400 steps)": {
        "AER defaults": ["benchmarks/default_job_2026-12-03/s[0-9]"],
        "no bonus": ["benchmarks/ablation_collapse_v5/fixed_alpha=0/seed*"],  # the first 400 steps: PREFIX
    },
}
#: arms read on their first N steps only: the main job is the collapse task's first 400 steps (its runs
#: of the defaults are, column for column, the first 400 rows of collapse v5's runs of the same seeds)
PREFIX = {("main job (400 steps)", "no bonus"): 400}
KINDS = ("in_band", "below", "above_after_bonus", "above_no_bonus")


def split_misses(
    entropy: np.ndarray,
    target: np.ndarray,
    alpha: np.ndarray,
    *,
    acting: float = ACTING,
    lookback: int = LOOKBACK,
) -> dict[str, Any]:
    """The shares of the steps from the first in-band one that are in band, below it, above it within
    ``lookback`` steps of α ≥ ``acting``, and above it otherwise; all None when the band is never reached."""
    band = read_band(entropy, target, start=WINDOW - 1)  # full windows only, as band_health reads
    if band.first_in_band is None:
        return {"first_in_band": None, **dict.fromkeys(KINDS)}
    first = band.first_in_band
    average, goal = band.average[first:], np.broadcast_to(target, band.average.shape)[first:]
    above = average > (1 + HALF_WIDTH) * goal
    below = average < (1 - HALF_WIDTH) * goal
    # the largest α over the lookback window ending at each step (the step itself included)
    recent = np.array([alpha[max(0, t - lookback) : t + 1].max() for t in range(first, len(alpha))])
    bonus = recent >= acting
    n = len(average)
    return {
        "first_in_band": first,
        "in_band": float(band.in_band[first:].sum() / n),
        "below": float(below.sum() / n),
        "above_after_bonus": float((above & bonus).sum() / n),
        "above_no_bonus": float((above & ~bonus).sum() / n),
    }


def read_run(run: Path, steps: int | None = None) -> dict[str, Any]:
    """One run's split, on its first ``steps`` steps (all of them by default)."""
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))[:steps]
    entropy = np.array([float(r["entropy"]) for r in rows])
    alpha = np.array([float(r["alpha"]) for r in rows])
    return {
        "run": str(run.relative_to(ROOT)),
        "steps": len(rows),
        **split_misses(entropy, logged_target(rows, entropy), alpha),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    args = parser.parse_args(argv)
    lines = [
        "# Where the steps outside the band go",
        "",
        "`python benchmarks/band_misses.py`: of the steps from the first one whose 50-step average entropy "
        f"is within ±{HALF_WIDTH:.0%} of H*, the share in band, below it, above it within {LOOKBACK} steps "
        f"of α ≥ {ACTING:g} (after a bonus), and above it with α below {ACTING:g} for the {LOOKBACK} steps "
        f"before (no bonus in reach). Runs without a target are read against {BAND_TAU:g}·H0, AER's "
        "default target on the same seed. Mean ± sample std over runs.",
        "",
        "| task | arm | runs | in band | below | above, after a bonus | above, no bonus in reach |",
        "|---|---|---|---|---|---|---|",
    ]
    out_tasks: list[dict[str, Any]] = []
    for task, arms in TASKS.items():
        for arm, patterns in arms.items():
            readings = [read_run(run, PREFIX.get((task, arm))) for run in finished_runs(patterns)]
            if not readings:
                continue
            reached = [r for r in readings if r["first_in_band"] is not None]
            cells = []
            summary: dict[str, Any] = {}
            for kind in KINDS:
                if not reached:
                    summary[kind] = None
                    cells.append("—")
                    continue
                mean, std = mean_std([r[kind] for r in reached])
                summary[kind] = {"mean": mean, "std": std}
                cells.append(f"{mean:.3f} ± {std:.3f}")
            never = len(readings) - len(reached)
            count = f"{len(readings)}" + (f" ({never} never in band)" if never else "")
            if (task, arm) in PREFIX:
                count += f" (first {PREFIX[task, arm]} steps of the collapse runs)"
            lines.append(f"| {task} | {arm} | {count} | " + " | ".join(cells) + " |")
            out_tasks.append({"task": task, "arm": arm, "runs": readings, "summary": summary})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "band_misses.md").write_text("\n".join(lines) + "\n")
    payload = {"acting": ACTING, "lookback": LOOKBACK, "band_tau": BAND_TAU, "tasks": out_tasks}
    (out / "band_misses.json").write_text(json.dumps(payload, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
