"""How long AER's defaults take to settle on each task we ship, read off the committed runs.

"Settles at" is the first step from which, to the end of the run, the 50-step average of the entropy
is within ±20 % of H* on at least 90 % of the steps (``entropyctl.controllers.band.settling_step``,
looked for from the first full window on): the issue's "≥ 90 % in band once settled" read as the
earliest step it holds from. A step late in a run holds trivially (the last steps of any run that ends
in band do), so the table gives it as a share of the run and counts the runs that settle within the
first half. The library defaults (``aer`` as shipped) are read on:

* collapse v5 / v3: ``configs/ablation_collapse_v5.yaml`` / ``_v3.yaml``, 3000 steps (two warm starts;
  v5's seeds 3–4 of the defaults and the floor in benchmarks/ablation_collapse_v5_seeds, seeds 5–7 and
  8–10 of the defaults and the low-climb term in benchmarks/ablation_collapse_v5_fresh and _third, seeds
  11–13 of the defaults in benchmarks/ablation_collapse_v5_more);
* main job: ``entropyctl train`` with no config (benchmarks/default_job_2026-12-03), 400 steps;
* level 2: the robustness sweep's second task, seeds 0–2, the ten-seed study's 3–9 and the twenty-seed
  study's 10–19, 600 steps (the first 600 steps of the collapse v5 run of the same seed);
* levels 1–2: the robustness sweep's first task (the 12-arm study's config), 600 steps (seeds 0–2 from
  the sweep's warm start, and seeds 0–9 from today's in benchmarks/robustness/levels12_seeds: the first
  600 steps of the 2000-step runs of the same seed), and the same task run to 2000 steps
  (configs/settling_levels12.yaml; seeds 5–9 in benchmarks/settling_levels12_fresh), and level 2 run
  to 2000 steps (the same config with ``data.levels=[2]``, benchmarks/settling_level2);
* SmolLM2-135M: ``configs/smollm2_aer.yaml`` run to 160 steps, seeds 0, 1 and 2 (benchmarks/smollm2_aer).

and a second table reads the candidates measured against them on the same tasks, warm starts and
seeds (the step 0.15, the climb boost, the gated boost, the floor ``alpha_min: 5e-4``, the rearm to
α_0 and to ``rearm_alpha: 5e-4``; the floor also on the two 2000-step tasks; conditional
integration; the linear term ``linear: 0.05``, both signs, on the climb and on the climb below α_0),
and a third the arms that do not adjust α at all (no bonus, fixed α, a constant α under AER's
allocation): what the same tasks give without a controller's update. A fourth reads the main job over
twenty seeds, the defaults and no bonus: the first 400 steps of level 2's runs, which are the main job's
runs row for row. Only finished runs are read.
Writes benchmarks/results/settling.{md,json}.

    python benchmarks/settling.py
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from entropyctl.controllers.band import SETTLED_SHARE, WINDOW, read_band, settling_step

ROOT = Path(__file__).resolve().parents[1]
TASKS = {
    "collapse v5 (3000 steps)": [
        "benchmarks/ablation_collapse_v5/aer/seed*",
        "benchmarks/ablation_collapse_v5_seeds/aer/seed*",
        "benchmarks/ablation_collapse_v5_fresh/aer/seed*",
        "benchmarks/ablation_collapse_v5_third/aer/seed*",
        "benchmarks/ablation_collapse_v5_more/aer/seed*",
    ],
    "collapse v3 (3000 steps, another warm start)": ["benchmarks/ablation_collapse_v3/aer/seed*"],
    "main job (400 steps)": ["benchmarks/default_job_2026-12-03/s[0-9]"],
    "level 2 (600 steps)": [
        "benchmarks/robustness/level2/aer/seed*",
        "benchmarks/robustness/level2_seeds/aer/seed*",
        "benchmarks/robustness/level2_twenty/aer/seed*",
    ],
    "levels 1–2, the 12-arm study's task (600 steps)": [
        "benchmarks/robustness/levels12/aer/seed*",
        "benchmarks/robustness/levels12_seeds/aer/seed*",
    ],
    "levels 1–2, the same task run to 2000 steps": [
        "benchmarks/settling_levels12/aer/seed*",
        "benchmarks/settling_levels12_fresh/aer/seed*",
    ],
    "level 2, run to 2000 steps": ["benchmarks/settling_level2/aer/seed*"],
    "SmolLM2-135M (160 steps)": [
        "benchmarks/smollm2_aer/t32_skip_to160",
        "benchmarks/smollm2_aer/seed1_160",
        "benchmarks/smollm2_aer/seed2_160",
    ],
}
#: the candidates measured against the defaults on the same tasks, warm starts and seeds
BOOST = "aer_update.climb_boost=10_update.climb_from=0.2"
REARM_5E4 = "aer_update.rearm_at_target=true_update.rearm_alpha=5e-4"
CANDIDATES = {
    "collapse v5: step 0.15": ["benchmarks/ablation_collapse_v5/aer_update.step=0.15/seed*"],
    "collapse v5: climb boost": [f"benchmarks/ablation_collapse_v5/{BOOST}/seed*"],
    "collapse v5: climb boost, gated (climb_after 25)": [
        f"benchmarks/ablation_collapse_v5/{BOOST}_update.climb_after=25/seed*"
    ],
    "main job: step 0.15": ["benchmarks/default_job_2026-12-03/probe_step015_s[0-9]"],
    "main job: climb boost": ["benchmarks/default_job_2026-12-03/probe_boost_s[0-9]"],
    "level 2: step 0.15": [
        "benchmarks/robustness/level2/aer_update.step=0.15/seed*",
        "benchmarks/robustness/level2_seeds/aer_update.step=0.15/seed*",
    ],
    "level 2: climb boost": [f"benchmarks/robustness/level2_seeds/{BOOST}/seed*"],
    "collapse v5: floor 5e-4": [
        "benchmarks/ablation_collapse_v5/aer_update.alpha_min=5.0e-4/seed*",
        "benchmarks/ablation_collapse_v5_seeds/aer_update.alpha_min=5.0e-4/seed*",
    ],
    "main job: floor 5e-4": ["benchmarks/default_job_2026-12-03/probe_floor_s[0-9]"],
    "level 2: floor 5e-4": [
        "benchmarks/robustness/level2/aer_update.alpha_min=5.0e-4/seed*",
        "benchmarks/robustness/level2_seeds/aer_update.alpha_min=5.0e-4/seed*",
    ],
    "levels 1–2: floor 5e-4": ["benchmarks/robustness/levels12/aer_update.alpha_min=5.0e-4/seed*"],
    "levels 1–2: step 0.15": ["benchmarks/robustness/levels12/aer_update.step=0.15/seed*"],
    "main job: rearm": ["benchmarks/default_job_2026-12-03/probe_rearm_s[0-9]"],
    "collapse v5: rearm": ["benchmarks/ablation_collapse_v5/aer_update.rearm_at_target=true/seed*"],
    "level 2: rearm": ["benchmarks/robustness/level2_seeds/aer_update.rearm_at_target=true/seed*"],
    "main job: rearm 5e-4": ["benchmarks/default_job_2026-12-03/probe_rearm5e4_s[0-9]"],
    "main job: linear 0.05, climb": ["benchmarks/default_job_2026-12-03/probe_linear_s[0-9]"],
    "main job: linear 0.05, low climb": ["benchmarks/default_job_2026-12-03/probe_lowclimb_s[0-9]"],
    "collapse v5: rearm 5e-4": [f"benchmarks/ablation_collapse_v5/{REARM_5E4}/seed*"],
    "level 2: rearm 5e-4": [f"benchmarks/robustness/level2_seeds/{REARM_5E4}/seed*"],
    "levels 1–2 to 2000 steps: floor 5e-4": ["benchmarks/settling_levels12/aer_update.alpha_min=5e-4/seed*"],
    "level 2 to 2000 steps: floor 5e-4": ["benchmarks/settling_level2/aer_update.alpha_min=5e-4/seed*"],
    "collapse v5: conditional": ["benchmarks/ablation_collapse_v5/aer_update.conditional=true/seed*"],
    "levels 1–2 to 2000 steps: conditional": [
        "benchmarks/settling_levels12/aer_update.conditional=true/seed*"
    ],
    "levels 1–2 to 2000 steps: linear 0.05, low climb": [
        "benchmarks/settling_levels12/aer_update.linear=0.05_update.linear_on=low_climb/seed*",
        "benchmarks/settling_levels12_fresh/aer_update.linear=0.05_update.linear_on=low_climb/seed*",
    ],
    "level 2: conditional": ["benchmarks/robustness/level2_conditional/aer_update.conditional=true/seed*"],
    "level 2: conditional, step 0.15": [
        "benchmarks/robustness/level2_conditional/aer_update.conditional=true_update.step=0.15/seed*"
    ],
    "collapse v5: linear 0.05, climb": [
        "benchmarks/ablation_collapse_v5/aer_update.linear=0.05_update.linear_on=climb/seed*"
    ],
    "level 2: linear 0.05": ["benchmarks/robustness/level2_linear/aer_update.linear=0.05/seed*"],
    "level 2: linear 0.05, climb": [
        "benchmarks/robustness/level2_linear/aer_update.linear=0.05_update.linear_on=climb/seed*"
    ],
    "collapse v5: linear 0.05, low climb": [
        "benchmarks/ablation_collapse_v5/aer_update.linear=0.05_update.linear_on=low_climb/seed*",
        "benchmarks/ablation_collapse_v5_seeds/aer_update.linear=0.05_update.linear_on=low_climb/seed*",
        "benchmarks/ablation_collapse_v5_fresh/aer_update.linear=0.05_update.linear_on=low_climb/seed*",
        "benchmarks/ablation_collapse_v5_third/aer_update.linear=0.05_update.linear_on=low_climb/seed*",
    ],
    "level 2: linear 0.05, low climb": [
        "benchmarks/robustness/level2_linear/aer_update.linear=0.05_update.linear_on=low_climb/seed*",
        "benchmarks/robustness/level2_twenty_lowclimb/aer_update.linear=0.05_update.linear_on=low_climb/seed*",
    ],
    "levels 1–2 (600 steps): linear 0.05, low climb": [
        "benchmarks/robustness/levels12_lowclimb/aer_update.linear=0.05_update.linear_on=low_climb/seed*"
    ],
}

#: arms that do not adjust α — no bonus, a fixed α, and a constant α = 0.01 under AER's allocation and
#: target (``update.rule: none``) — read the same way: what a 400-3000-step run of the same task, warm
#: start and seeds gives without a controller's update (a run without a target of its own is read
#: against BAND_TAU·H0, the target AER's defaults set on the same seed: ``logged_target``)
REFERENCES = {
    "collapse v5: no bonus": ["benchmarks/ablation_collapse_v5/fixed_alpha=0/seed*"],
    "collapse v5: fixed α = 0.003": ["benchmarks/ablation_collapse_v5_fixed/fixed_alpha=0.003/seed*"],
    "collapse v5: fixed α = 0.01": ["benchmarks/ablation_collapse_v5_fixed/fixed_alpha=0.01/seed*"],
    "collapse v5: fixed α = 0.03": ["benchmarks/ablation_collapse_v5_fixed/fixed_alpha=0.03/seed*"],
    "collapse v5: fixed α = 0.06": ["benchmarks/ablation_collapse_v5_knobs/fixed_alpha=0.06/seed*"],
    "level 2: no bonus": [
        "benchmarks/robustness/level2/fixed_alpha=0/seed*",
        "benchmarks/robustness/level2_seeds/fixed_alpha=0/seed*",
    ],
    "level 2: fixed α = 0.003": ["benchmarks/robustness/level2/fixed_alpha=0.003/seed*"],
    "level 2: fixed α = 0.01": [
        "benchmarks/robustness/level2/fixed_alpha=0.01/seed*",
        "benchmarks/robustness/level2_seeds/fixed_alpha=0.01/seed*",
    ],
    "level 2: fixed α = 0.03": ["benchmarks/robustness/level2/fixed_alpha=0.03/seed*"],
    "level 2: constant α = 0.01, AER's allocation": [
        "benchmarks/robustness/level2_seeds/aer_update.rule=none_alpha_0=0.01/seed*"
    ],
    "levels 1–2 (600 steps): no bonus": [
        "benchmarks/robustness/levels12/fixed_alpha=0/seed*",
        "benchmarks/robustness/levels12_seeds/fixed_alpha=0/seed*",
    ],
    "levels 1–2 (600 steps): fixed α = 0.01": [
        "benchmarks/robustness/levels12/fixed_alpha=0.01/seed*",
        "benchmarks/robustness/levels12_seeds/fixed_alpha=0.01/seed*",
    ],
    "levels 1–2 (600 steps): constant α = 0.01, AER's allocation": [
        "benchmarks/robustness/levels12_seeds/aer_update.rule=none_alpha_0=0.01/seed*"
    ],
    "levels 1–2 to 2000 steps: no bonus": ["benchmarks/settling_levels12/fixed_alpha=0/seed*"],
}

#: shorter runs of a task read off the first steps of longer ones: the main job's runs are, row for row,
#: the first 400 steps of level 2's 600-step runs of the same seed (tests/test_committed_settling.py
#: checks it on seeds 0–2, the main job's own runs), so level 2's twenty seeds give the main job twenty
PREFIXES = {
    "main job (400 steps), seeds 0–19: the first 400 steps of level 2's runs": (
        TASKS["level 2 (600 steps)"],
        400,
    ),
    "main job (400 steps), no bonus, seeds 0–9: the first 400 steps of level 2's": (
        REFERENCES["level 2: no bonus"],
        400,
    ),
}

#: a run without a target of its own (fixed α) is read against this fraction of its first reading
BAND_TAU = 0.4


def logged_target(rows: list[dict[str, str]], entropy: np.ndarray) -> np.ndarray:
    """Each step's H* from a run's metrics rows; a fixed-α run logs none, and is read against
    BAND_TAU·H0 (its first reading), the target AER's defaults set on the same seed."""
    target = np.array([float(r["target_entropy"] or "nan") for r in rows])
    with np.errstate(invalid="ignore"):
        if not np.any(np.isfinite(target) & (target > 0)):  # NaN before anchoring is still a target
            target = np.full_like(entropy, BAND_TAU * entropy[0])
    return target


def finished_runs(patterns: list[str]) -> list[Path]:
    """The finished runs the globs ``patterns`` (relative to the checkout) match, seed0 … seed9 before
    seed10 (by name length, then name, then path)."""
    runs = sorted(
        (p for pattern in patterns for p in ROOT.glob(pattern) if (p / "metrics.csv").exists()),
        key=lambda p: (len(p.name), p.name, str(p)),
    )
    return [r for r in runs if json.loads((r / "summary.json").read_text()).get("status") == "finished"]


def read_run(run: Path, steps: int | None = None) -> dict[str, Any]:
    """One run's reading; with ``steps``, of its first ``steps`` rows only (a shorter run of the task)."""
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))[:steps]
    entropy = np.array([float(r["entropy"]) for r in rows])
    band = read_band(entropy, logged_target(rows, entropy), start=WINDOW - 1)
    step = settling_step(band.in_band, start=WINDOW - 1)
    return {
        "run": str(run.relative_to(ROOT)),
        "steps": len(rows),
        # 0-based step indices, as collapse_reading's band readings give them (robustness_reading's are 1-based)
        "first_in_band": band.first_in_band,
        "settles_at": step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    args = parser.parse_args()
    tasks = []
    whole = {task: (patterns, None) for task, patterns in {**TASKS, **CANDIDATES, **REFERENCES}.items()}
    for task, (patterns, steps) in {**whole, **PREFIXES}.items():
        readings = [read_run(run, steps) for run in finished_runs(patterns)]
        early = [r for r in readings if r["settles_at"] is not None and 2 * r["settles_at"] <= r["steps"]]
        tasks.append({"task": task, "runs": readings, "settled_in_first_half": len(early)})
    lines = [
        "# How long the defaults take to settle",
        "",
        "`python benchmarks/settling.py`: per run of AER's defaults, the first step from which the 50-step "
        f"average is in band (±20 % of H*) on ≥ {SETTLED_SHARE:.0%} of the steps to the end, and that step "
        "as a share of the run; '—' where it holds from no step. 'First in band' is the step the band "
        "readings count from.",
        "",
    ]
    header = [
        "| task | runs | settles at (share of the run) | first in band | settled within the first half |",
        "|---|---|---|---|---|",
    ]
    lines += header
    for t in tasks:
        if t["task"] == next(iter(CANDIDATES)):
            lines += [
                "",
                "The candidates measured against the defaults (same tasks, warm starts and seeds):",
                "",
            ]
            lines += header
        if t["task"] == next(iter(REFERENCES)):
            lines += [
                "",
                "Arms that do not adjust α, on the same tasks, warm starts and seeds (a run without a target "
                f"of its own read against {BAND_TAU:g}·H0, the target AER's defaults set on it):",
                "",
            ]
            lines += header
        if t["task"] == next(iter(PREFIXES)):
            lines += [
                "",
                "Shorter runs read off the first steps of longer ones (the same task, warm start and seed: the "
                "main job's runs are the first 400 steps of level 2's, row for row):",
                "",
            ]
            lines += header
        runs = t["runs"]
        settles = ", ".join(
            "—" if r["settles_at"] is None else f"{r['settles_at']} ({r['settles_at'] / r['steps']:.2f})"
            for r in runs
        )
        first = ", ".join("—" if r["first_in_band"] is None else str(r["first_in_band"]) for r in runs)
        lines.append(
            f"| {t['task']} | {len(runs)} | {settles} | {first} | {t['settled_in_first_half']} of {len(runs)} |"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "settling.md").write_text("\n".join(lines) + "\n")
    (out / "settling.json").write_text(json.dumps({"share": SETTLED_SHARE, "tasks": tasks}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
