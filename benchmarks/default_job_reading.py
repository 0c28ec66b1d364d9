"""README's default-job table from the run directories of `entropyctl train` at the embedded default:
per seed, held-out pass@1/pass@8 before and after RL, the entropy against AER's target, and what the
controller did once the entropy fell below it.

    python benchmarks/default_job_reading.py benchmarks/default_job_2026-12-03/s0 ... [--json out.json]

Columns:
- H0 → last quarter: the anchor H0 and the mean reading over the run's last quarter, in nats and as H/H0
  (H* = 0.4·H0 at the defaults);
- below H* from: the first step whose 20-step average of the readings is below H* (the regime where
  the bonus is needed; None if never);
- α raised: the share of the steps after that on which α_t went up (the rule raises α while its
  smoothed reading is below H*);
- α after: the range of α_t over those steps; coef: the largest token-weighted mean coefficient the
  bonus applied (`coef_mean`, α_t·w(acc_i));
- in band: issue 12's measure, the share of the steps after the 50-step average of the entropy first
  came within ±20 % of H* on which it is still there (`entropyctl.controllers.band`).

A run without a target of its own (a fixed α) is read against the target AER's defaults would set on
the same run: H0 its first reading (AER's `anchor.steps: 1`) and H* = 0.4·H0 (`target_tau` records it).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from entropyctl.controllers.band import WINDOW as BAND_WINDOW
from entropyctl.controllers.band import read_band

#: the moving average that decides the entropy is below the target
WINDOW = 20
#: τ of AER's defaults when the committed fixed-vs-AER pairs ran: a run without a target is read
#: against TARGET_TAU·H0 (a literal on purpose: tests/test_committed_smollm2.py checks each pair's AER
#: run used it, so a later change of the default does not re-read the committed pairs)
TARGET_TAU = 0.4


def read_run(run: Path) -> dict[str, Any]:
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    summary = json.loads((run / "summary.json").read_text())
    if summary.get("status") != "finished":
        raise SystemExit(f"{run}: the run is not finished (status {summary.get('status')!r})")
    entropy = [float(r["entropy"]) for r in rows]
    alpha = [float(r["alpha"]) for r in rows]
    coef = [float(r["coef_mean"]) for r in rows]
    if summary.get("target_entropy") is None:  # a fixed α: read against AER's default target
        h0, target, tau = entropy[0], TARGET_TAU * entropy[0], TARGET_TAU
    else:
        h0, target, tau = float(summary["h0"]), float(summary["target_entropy"]), None
    below = None
    for i in range(WINDOW - 1, len(entropy)):
        if sum(entropy[i - WINDOW + 1 : i + 1]) / WINDOW < target:
            below = i + 1  # 1-based step
            break
    after = range(below, len(alpha)) if below is not None else range(0)
    raised = sum(alpha[i] > alpha[i - 1] for i in after)
    last_quarter = entropy[3 * len(entropy) // 4 :]
    band = read_band(np.asarray(entropy), target, start=BAND_WINDOW - 1)  # the first full window
    return {
        "run": str(run),
        "seed": summary["seed"],
        "steps": summary["steps"],
        "status": summary["status"],
        "wall_time_s": summary.get("wall_time_s"),
        "time_rl_s": summary.get("time_rl_s"),
        "pass@1": [summary["before"]["pass@1"], summary["after"]["pass@1"]],
        "pass@8": [summary["before"].get("pass@8"), summary["after"].get("pass@8")],
        "h0": h0,
        "target_entropy": target,
        "target_tau": tau,
        "last_quarter_entropy": sum(last_quarter) / len(last_quarter),
        "below_target_from": below,
        "alpha_raised_share": raised / len(after) if len(after) else 0.0,
        "alpha_after": [min(alpha[i] for i in after), max(alpha[i] for i in after)] if len(after) else None,
        "max_coef": max(coef),
        "in_band": band.in_band_share if band.first_in_band is not None else 0.0,
    }


def table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| seed | pass@1 before → after | pass@8 before → after | H0 → last quarter (nats; H/H0) "
        "| below H* from step | α raised (steps after) | α after | largest coef | in band |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        a = r["alpha_after"]
        alpha = f"{a[0]:.1e} … {a[1]:.1e}" if a else "—"
        lines.append(
            f"| {r['seed']} | {r['pass@1'][0]:.3f} → {r['pass@1'][1]:.3f} "
            f"| {r['pass@8'][0]:.3f} → {r['pass@8'][1]:.3f} "
            f"| {r['h0']:.3f} → {r['last_quarter_entropy']:.3f} ({r['last_quarter_entropy'] / r['h0']:.2f}) "
            f"| {r['below_target_from'] if r['below_target_from'] is not None else 'never'} "
            f"| {r['alpha_raised_share']:.0%} | {alpha} | {r['max_coef']:.1e} | {r['in_band']:.2f} |"
        )
    return "\n".join(lines)


def run_cli(
    description: str,
    read: Callable[[Path], dict[str, Any]],
    render: Callable[[list[dict[str, Any]]], str],
) -> None:
    """``script RUN ... [--json FILE]``: read each run, print the table, write the figures."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (metrics.csv, summary.json)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    runs = [read(run) for run in args.runs]
    print(render(runs))
    if args.json is not None:
        args.json.write_text(json.dumps(runs, indent=2) + "\n")


def main() -> None:
    run_cli(__doc__.split("\n\n")[0], read_run, table)


if __name__ == "__main__":
    main()
