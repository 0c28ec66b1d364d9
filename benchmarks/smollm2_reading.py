"""The SmolLM2-135M runs of AER at its defaults (configs/smollm2_aer.yaml and its variants): per run,
held-out pass@1/pass@8 before and after, the entropy against H*, what α did (the main job's reading,
benchmarks/default_job_reading.py), and what decides whether a bonus can hold the entropy there:

- steps with a correct answer: steps on which at least one of the rollouts scored above 0 (only
  those can have a group with a policy-gradient signal);
- skipped: steps ``algorithm.skip_no_signal`` left alone (``grad_norm`` exactly 0);
- bonus reached (last ¼): the mean over the last quarter of the coefficient that acted on a step's
  tokens (``coef_mean``; 0 on a skipped step, whose plan moved no weight) over the α the step applied
  (the previous row's ``alpha``): under ``allocation: threshold`` a group above the accuracy
  threshold gets none;
- peak H/H0: the largest 10-step average of the entropy over H0 (above 1.5: the issue's explosion);
- in band: the share of the steps after the 50-step average first came within ±20 % of H* on which it
  is still there ("never reached": it did not come within the band in the run); a fixed α has no H*
  and is read against the 0.4·H0 AER's defaults would set on the same run (H0 its first reading).

    python benchmarks/smollm2_reading.py benchmarks/smollm2_aer/t8_noskip ... [--json out.json]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from default_job_reading import read_run as read_main_job  # noqa: E402
from default_job_reading import run_cli  # noqa: E402

from entropyctl.controllers.band import WINDOW as BAND_WINDOW  # noqa: E402
from entropyctl.controllers.band import read_band  # noqa: E402
from entropyctl.trainer.run_dir import coefficient_acted, step_skipped  # noqa: E402

#: the moving average the peak is read from
PEAK_WINDOW = 10


def _controller(controller: dict[str, Any]) -> str:
    """``aer``, ``aer α≡…`` (``update: {rule: none}``) or ``fixed α=…``: the name, and the coefficient
    of a controller whose α does not move."""
    if controller["name"] == "fixed":
        return f"fixed α={controller['alpha']:g}"
    if controller.get("update", {}).get("rule") == "none":
        return f"{controller['name']} α≡{controller['alpha_0']:g}"
    return str(controller["name"])


def _allocation(controller: dict[str, Any]) -> str:
    """AER's allocation rule; ``fixed`` gives every prompt the same coefficient."""
    if controller["name"] == "fixed":
        return "uniform"
    return str(controller.get("allocation", {}).get("rule", "threshold"))


def read_run(run: Path) -> dict[str, Any]:
    reading = read_main_job(run)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    entropy = np.array([float(r["entropy"]) for r in rows])
    smooth = np.convolve(entropy, np.ones(PEAK_WINDOW) / PEAK_WINDOW, mode="valid")
    config = yaml.safe_load((run / "config.yaml").read_text())
    last_quarter = range(len(rows) - len(rows) // 4, len(rows))
    reading.update(
        name=run.name,
        seed=int(config["seed"]),
        controller=_controller(config["controller"]),
        rearm_at_target=bool(config["controller"].get("update", {}).get("rearm_at_target", False)),
        max_new_tokens=config["rollout"]["max_new_tokens"],
        skip_no_signal=bool(config.get("algorithm", {}).get("skip_no_signal", False)),
        steps_with_correct=sum(float(r["reward"]) > 0 for r in rows),
        skipped=sum(step_skipped(r) for r in rows),
        peak_ratio=float(smooth.max() / reading["h0"]),
        # a row's `alpha` is the α after its reading, applied by the next step: step t applied row t-1's
        bonus_reached=float(
            np.mean([coefficient_acted(rows[i]) / float(rows[i - 1]["alpha"]) for i in last_quarter])
        ),
        allocation=_allocation(config["controller"]),
        alpha_first_last=[float(rows[0]["alpha"]), float(rows[-1]["alpha"])],
        first_in_band=read_band(entropy, reading["target_entropy"], start=BAND_WINDOW - 1).first_in_band,
    )
    return reading


def table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| run | controller | seed | allocation | rearm_at_target | new tokens | skip_no_signal | pass@1 before → after | pass@8 before → after "
        "| H0 → last quarter (nats; H/H0) | peak H/H0 | steps with a correct answer | skipped "
        "| α first → last | bonus reached (last ¼) | in band |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        a = r["alpha_first_last"]
        lines.append(
            f"| `{r['name']}` | {r['controller']} | {r['seed']} | {r['allocation']} | {str(r['rearm_at_target']).lower()} | {r['max_new_tokens']} | {str(r['skip_no_signal']).lower()} "
            f"| {r['pass@1'][0]:.3f} → {r['pass@1'][1]:.3f} | {r['pass@8'][0]:.3f} → {r['pass@8'][1]:.3f} "
            f"| {r['h0']:.2f} → {r['last_quarter_entropy']:.2f} ({r['last_quarter_entropy'] / r['h0']:.2f}) "
            f"| {r['peak_ratio']:.2f} | {r['steps_with_correct']} of {r['steps']} | {r['skipped']} "
            f"| {a[0]:.1e} → {a[1]:.1e} | {r['bonus_reached']:.2f} "
            f"| {_band(r)} |"
        )
    return "\n".join(lines)


def _band(r: dict[str, Any]) -> str:
    if r["first_in_band"] is None:
        return "never reached"
    against = "" if r["target_tau"] is None else f" (against {r['target_tau']:g}·H0)"
    return f"{r['in_band']:.2f}{against}"


def main() -> None:
    run_cli(__doc__.split("\n\n")[0], read_run, table)


if __name__ == "__main__":
    main()
