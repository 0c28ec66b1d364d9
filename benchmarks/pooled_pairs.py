"""One judgement over several tasks' paired runs: a candidate against AER's defaults, each pair the
same task, warm start and seed, pooled over the tasks. Two candidates, each with the rule its numbers
are read by in docs/robustness.md (written before the runs): ``low_climb`` ("The low-climb term, a
third look"; the default) and ``floor_gate`` ("The floor behind a gate").

Per run, the readings the rule names: in band after first reaching it and α at a bound after that
(``collapse_reading.read_run``), settling within the first half (``settling.read_run``), held-out
pass@1 (the last evaluation, or the mean of the last three on the 3000-step task, as
``collapse_reading.arm_value`` reads them), and explosion (H/H0 over the last quarter above the
report's 1.2). For ``low_climb``, per pair, a check that the two runs are one run until the
candidate's option can act: the option acts only once the entropy has been at or below H*, and a
smoothed reading cannot get there before a step reading does, so α must be the same in both runs
through the first step whose reading is at or below H* (the gate of ``floor_gate`` acts from the first
step: not checked). Per task, pooled over all pairs, and (``low_climb``) pooled over the pairs no
earlier reading had seen: the mean paired difference (candidate − defaults) ± its standard error
(sample std / √n), and the runs settling within the first half. Writes
benchmarks/results/pooled_pairs.{md,json} (``floor_gate``: pooled_pairs_floor_gate.{md,json}).

    python benchmarks/pooled_pairs.py [--candidate low_climb|floor_gate]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from collapse_reading import arm_value  # noqa: E402
from collapse_reading import read_run as band_reading  # noqa: E402
from settling import read_run as settling_reading  # noqa: E402

from entropyctl.experiments.aggregate import EXPLOSION_RATIO  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CANDIDATE = "aer_update.linear=0.05_update.linear_on=low_climb"
FLOOR_GATE = "aer_update.alpha_min=5e-4_update.apply=at_or_below_target"
Tasks = dict[str, tuple[str, str, list[int], str]]


def paired_tasks(arm: str, folders: tuple[str, str, str], level2_seeds: list[int]) -> Tasks:
    """task → (the defaults' runs, the candidate's runs, seeds, the pass@1 reading); paths relative to the
    checkout, one run per seed under each (``seed<N>``). ``folders``: the candidate's levels-1–2,
    level-2 and collapse folders (the defaults' are the same for every candidate)."""
    levels12, level2, collapse = folders
    return {
        "levels 1–2 (600 steps)": (
            "benchmarks/robustness/levels12_seeds/aer",
            f"benchmarks/robustness/{levels12}/{arm}",
            list(range(10)),
            "pass@1",
        ),
        "level 2 (600 steps)": (
            "benchmarks/robustness/level2_twenty/aer",
            f"benchmarks/robustness/{level2}/{arm}",
            level2_seeds,
            "pass@1",
        ),
        "collapse v5 (3000 steps)": (
            "benchmarks/ablation_collapse_v5_third/aer",
            f"benchmarks/{collapse}/{arm}",
            [8, 9, 10],
            "pass@1 last 3",
        ),
    }


TASKS = paired_tasks(
    CANDIDATE,
    ("levels12_lowclimb", "level2_twenty_lowclimb", "ablation_collapse_v5_third"),
    list(range(10, 20)),
)
#: the pairs no earlier reading had seen and that share no steps with another pair (docs/robustness.md,
#: "A flaw in the rule above"): the 600-step tasks are prefixes of the 3000- and 2000-step ones, so the
#: level-2 pair of seed 10 is the collapse pair's first 600 steps and the levels-1-2 pairs are the first
#: 600 steps of committed 2000-step runs of both arms
UNSEEN = {"level 2 (600 steps)": list(range(11, 20)), "collapse v5 (3000 steps)": [8, 9, 10]}
#: the floor behind the gate (docs/robustness.md, "The floor behind a gate"): 22 pairs, none sharing steps
#: with another (level 2 seed 10, the collapse pair's first 600 steps, left out)
FLOOR_GATE_TASKS = paired_tasks(
    FLOOR_GATE, ("levels12_gate", "level2_twenty_gate", "ablation_collapse_v5_gate"), list(range(11, 20))
)
#: candidate → (its arm, its tasks, its unseen pairs (None: no such group), whether its pairs are one run
#: until H*, the output files' stem)
CANDIDATES: dict[str, tuple[str, Tasks, dict[str, list[int]] | None, bool, str]] = {
    "low_climb": (CANDIDATE, TASKS, UNSEEN, True, "pooled_pairs"),
    "floor_gate": (FLOOR_GATE, FLOOR_GATE_TASKS, None, False, "pooled_pairs_floor_gate"),
}
TAU = 0.4  # the defaults' τ (both arms' runs log their own H*; this reads H0·τ in collapse_reading)
#: the readings compared per pair: key → what it is
COMPARED = {"in_band": "in band after first reaching it", "pass1": "held-out pass@1"}


def same_run_until_crossing(defaults: Path, candidate: Path) -> dict[str, Any]:
    """The first step whose α differs between the two runs and the first step whose entropy reading is
    at or below H*: the first must come after the second (or never) if the two are one run until the
    option can act."""
    with (defaults / "metrics.csv").open(newline="") as f, (candidate / "metrics.csv").open(newline="") as g:
        differs = crossing = None
        for a, b in zip(csv.DictReader(f), csv.DictReader(g), strict=False):
            step = int(a["step"])
            if crossing is None and float(b["entropy"]) <= float(b["target_entropy"]):
                crossing = step
            if a["alpha"] != b["alpha"]:
                differs = step
                break
    ok = differs is None or (crossing is not None and differs > crossing)
    return {"alpha_differs_from": differs, "first_reading_at_or_below_target": crossing, "same_run_until": ok}


def read(run: Path, pass_key: str) -> dict[str, Any]:
    band = band_reading(run, TAU)
    settle = settling_reading(run)
    settles = settle["settles_at"]
    return {
        "run": str(run.relative_to(ROOT)),
        "in_band": float(band["in_band_share_after"]),
        "alpha_at_bound": float(band["alpha_at_bound_after"]),
        "pass1": arm_value(band, pass_key),
        "settles_at": settles,
        "settles_in_first_half": settles is not None and 2 * settles <= settle["steps"],
        "exploded": float(band["last_quarter_over_h0"]) > EXPLOSION_RATIO,
    }


def difference(values: list[float]) -> dict[str, float]:
    n = len(values)
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(n) if n > 1 else math.nan
    return {"n": n, "mean": mean, "se": se, "mean_over_se": mean / se if se > 0 else math.nan}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    parser.add_argument("--candidate", choices=sorted(CANDIDATES), default="low_climb", help="whose rule")
    args = parser.parse_args()
    arm, tasks, unseen_seeds, one_run, stem = CANDIDATES[args.candidate]
    pairs: list[dict[str, Any]] = []
    for task, (defaults, candidate, seeds, pass_key) in tasks.items():
        for seed in seeds:
            d, c = ROOT / defaults / f"seed{seed}", ROOT / candidate / f"seed{seed}"
            if (
                not (c / "summary.json").exists()
                or json.loads((c / "summary.json").read_text())["status"] != "finished"
            ):
                continue
            pairs.append(
                {"task": task, "seed": seed, "defaults": read(d, pass_key), "candidate": read(c, pass_key)}
                | (same_run_until_crossing(d, c) if one_run else {})
            )
    groups = {task: [p for p in pairs if p["task"] == task] for task in tasks}
    groups |= {"pooled": pairs}
    if unseen_seeds is not None:
        groups["pooled, unseen and non-overlapping"] = [
            p for p in pairs if p["seed"] in unseen_seeds.get(p["task"], [])
        ]
    summary: dict[str, Any] = {}
    for name, group in groups.items():
        if not group:
            continue
        summary[name] = (
            {key: difference([p["candidate"][key] - p["defaults"][key] for p in group]) for key in COMPARED}
            | {
                "pairs": len(group),
                "settle_in_first_half": {
                    arm: sum(p[arm]["settles_in_first_half"] for p in group)
                    for arm in ("defaults", "candidate")
                },
                "candidate_alpha_at_bound_at_most_0.10": sum(
                    p["candidate"]["alpha_at_bound"] <= 0.10 for p in group
                ),
                "candidate_explodes_where_defaults_do_not": sum(
                    p["candidate"]["exploded"] and not p["defaults"]["exploded"] for p in group
                ),
            }
            | ({"pairs_one_run_until_crossing": sum(p["same_run_until"] for p in group)} if one_run else {})
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps({"pairs": pairs, "summary": summary}, indent=1) + "\n")
    command = "python benchmarks/pooled_pairs.py" + (
        "" if args.candidate == "low_climb" else f" --candidate {args.candidate}"
    )
    lines = [
        "# A candidate against the defaults, pooled over tasks",
        "",
        f"`{command}`: `{arm}` against `aer` (the defaults), paired by seed; "
        "differences are candidate − defaults, mean ± standard error (sample std / √n).",
        "",
        "| task | pairs | in band | held-out pass@1 | settle within the first half (defaults → candidate) "
        "| candidate α at a bound ≤ 0.10 | candidate explodes where defaults do not |"
        + (" one run until H* |" if one_run else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if one_run else ""),
    ]
    for name, s in summary.items():
        band, acc = s["in_band"], s["pass1"]
        settle = s["settle_in_first_half"]
        lines.append(
            f"| {name} | {s['pairs']} | {band['mean']:+.3f} ± {band['se']:.3f} | {acc['mean']:+.3f} ± {acc['se']:.3f} "
            f"| {settle['defaults']} → {settle['candidate']} | {s['candidate_alpha_at_bound_at_most_0.10']} "
            f"| {s['candidate_explodes_where_defaults_do_not']} |"
            + (f" {s['pairs_one_run_until_crossing']} |" if one_run else "")
        )
    lines += [
        "",
        "Per pair (in band, pass@1, settles at: defaults → candidate):",
        "",
        "| task | seed | in band | pass@1 | settles at |"
        + (" α differs from / first reading ≤ H* |" if one_run else ""),
        "|---|---|---|---|---|" + ("---|" if one_run else ""),
    ]
    for p in pairs:
        d, c = p["defaults"], p["candidate"]
        lines.append(
            f"| {p['task']} | {p['seed']} | {d['in_band']:.2f} → {c['in_band']:.2f} | {d['pass1']:.3f} → {c['pass1']:.3f} "
            f"| {d['settles_at'] if d['settles_at'] is not None else '—'} → "
            f"{c['settles_at'] if c['settles_at'] is not None else '—'} |"
            + (f" {p['alpha_differs_from']} / {p['first_reading_at_or_below_target']} |" if one_run else "")
        )
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
