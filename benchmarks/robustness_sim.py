"""Robustness of a fixed coefficient vs AER's own knobs, on the entropy plant (a model, not a
training run): for each knob value and plant, does the entropy neither collapse nor explode?

Three level plants stand in for three tasks/models whose entropy reacts to the bonus with a gain 100x
apart (the α that holds a given entropy moves by 100x); each with 10 % reading noise, one step of lag
and a drift toward collapse. Two rate plants (the bonus sets how fast the entropy moves, the shape of
the collapse runs) need a coefficient 33x apart to hold still, with 30 % reading noise. A run *collapses* when the mean entropy over its last 200 steps is below 0.1·H0
and *explodes* when it is above 1.5·H0. Writes benchmarks/results/robustness_sim.{json,md}.

    python benchmarks/robustness_sim.py
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from entropyctl import create_controller
from entropyctl.controllers.plant import EntropyPlant, simulate

STEPS = 1500
SEEDS = (0, 1, 2)
COMMON = {"reading_noise": 0.1, "lag": 1, "drift": 0.001, "h_init": 1.0, "h_max": 3.0}
#: the rate (integrating) plants: the bonus sets how fast the entropy moves (the collapse runs' shape)
RATE = {
    "response": "rate",
    "reading_noise": 0.3,
    "noise": 0.01,
    "lag": 1,
    "drift": 0.0005,
    "h_init": 1.0,
    "h_max": 3.0,
}
PLANTS: dict[str, dict[str, Any]] = {
    "gain 5": {"gain": 5.0, "decay": 0.05, **COMMON},
    "gain 50": {"gain": 50.0, "decay": 0.1, **COMMON},
    "gain 500": {"gain": 500.0, "decay": 0.03, **COMMON},
    "rate, balance 0.003": {"balance": 0.003, "rate_gain": 0.02, "collapse": 0.003, **RATE},
    "rate, balance 0.1": {"balance": 0.1, "rate_gain": 0.01, "collapse": 0.002, **RATE},
}
FIXED = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
STEP_SIZES = [0.01, 0.03, 0.1, 0.3, 1.0]
TAUS = [0.2, 0.4, 0.6, 0.8]


def outcome(config: dict[str, Any], plant: dict[str, Any], seed: int) -> dict[str, float]:
    trajectory = simulate(create_controller(config), EntropyPlant(**plant, seed=seed), STEPS)
    h0 = trajectory.entropy[0]
    final = statistics.fmean(trajectory.entropy[-200:]) / h0
    return {"final_over_h0": final, "collapsed": final < 0.1, "exploded": final > 1.5}


def main() -> None:
    arms: list[tuple[str, str, float, dict[str, Any]]] = []
    arms += [("fixed α", "alpha", a, {"name": "fixed", "alpha": a}) for a in FIXED]
    arms += [("aer step κ", "update.step", k, {"name": "aer", "update": {"step": k}}) for k in STEP_SIZES]
    arms += [("aer τ", "anchor.tau", t, {"name": "aer", "anchor": {"tau": t}}) for t in TAUS]
    rows = []
    for method, knob, value, config in arms:
        for plant_name, plant in PLANTS.items():
            results = [outcome(config, plant, seed) for seed in SEEDS]
            rows.append(
                {
                    "method": method,
                    "knob": knob,
                    "value": value,
                    "plant": plant_name,
                    "final_over_h0": [round(r["final_over_h0"], 3) for r in results],
                    "ok": all(not r["collapsed"] and not r["exploded"] for r in results),
                }
            )
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "robustness_sim.json").write_text(
        json.dumps({"steps": STEPS, "seeds": SEEDS, "plants": PLANTS, "rows": rows}, indent=1)
    )
    lines = ["| method | value | " + " | ".join(PLANTS) + " |", "|---|---|" + "---|" * len(PLANTS)]
    for method, _knob, value, _ in arms:
        cells = []
        for plant_name in PLANTS:
            row = next(
                r for r in rows if r["method"] == method and r["value"] == value and r["plant"] == plant_name
            )
            mark = (
                "ok"
                if row["ok"]
                else (
                    "collapse"
                    if max(row["final_over_h0"]) < 0.1
                    else "explode"
                    if min(row["final_over_h0"]) > 1.5
                    else "mixed"
                )
            )
            cells.append(f"{mark} ({statistics.fmean(row['final_over_h0']):.2f})")
        lines.append(f"| {method} | {value:g} | " + " | ".join(cells) + " |")
    lines.append("")
    for method in dict.fromkeys(a[0] for a in arms):
        good = [
            v
            for m, _, v, _ in arms
            if m == method and all(r["ok"] for r in rows if r["method"] == method and r["value"] == v)
        ]
        span = f"{min(good):g} … {max(good):g} ({max(good) / min(good):.0f}×)" if good else "none"
        lines.append(f"- {method}: ok on every plant for {span}")
    (out / "robustness_sim.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
