"""The standing error while the integral follows a ramp (docs/controllers.md, "Why no second
integrator"), read off committed runs of AER's defaults.

Per run, over consecutive 200-step windows from step 200: the mean relative error e = (H* − H)/H* of
the step readings, and the rise of log α per step over the window divided by the integral step κ. A
loop with one integrator that follows a ramp of r in log α per step stands at e = r/κ, so the two
columns agree where the integral, not the proportional term or a bound, moves α (a check of the
reading, not of the rule). Windows where e stays near +0.2 for several hundred steps are the ramp
that a second integrator would follow without that error. Writes benchmarks/results/ramp_error.{json,md}.

    python benchmarks/ramp_error.py [runs ...]   (default: benchmarks/settling_levels12/aer/seed[012])
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from entropyctl.experiments.aggregate import load_run

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 200
DEFAULT_RUNS = "benchmarks/settling_levels12/aer/seed[012]"  # the three runs the reading was made on


def windows(run: Path) -> list[dict[str, float]]:
    """The run's 200-step windows from step 200: the mean error and the rise of log α per step / κ."""
    record = load_run(run)
    kappa = float(record.config["controller"]["update"]["step"])
    entropy, target, alpha = (record.metrics[c] for c in ("entropy", "target_entropy", "alpha"))
    out = []
    for start in range(WINDOW, len(entropy) - WINDOW + 1, WINDOW):
        span = slice(start, start + WINDOW)
        error = float(np.mean((target[span] - entropy[span]) / target[span]))
        rise = (math.log(alpha[start + WINDOW - 1]) - math.log(alpha[start])) / WINDOW
        out.append({"start": start, "error": round(error, 3), "rise_over_step": round(rise / kappa, 3)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help=f"run directories (default {DEFAULT_RUNS})")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    args = parser.parse_args()
    runs = [Path(r) for r in args.runs] or sorted(ROOT.glob(DEFAULT_RUNS))
    reading = {str(run.resolve().relative_to(ROOT)): windows(run) for run in runs}
    starts = sorted({w["start"] for ws in reading.values() for w in ws})
    lines = [
        "# The standing error while the integral follows a ramp",
        "",
        "`python benchmarks/ramp_error.py`: per run and 200-step window, the mean relative error "
        "e = (H* − H)/H* and the rise of log α per step over κ (they agree where the integral moves α).",
        "",
        "| run | " + " | ".join(f"{s}–{s + WINDOW}" for s in starts) + " |",
        "|---|" + "---|" * len(starts),
    ]
    for run, ws in reading.items():
        cells = {w["start"]: f"{w['error']:+.2f} / {w['rise_over_step']:+.2f}" for w in ws}
        lines.append(f"| `{run}` | " + " | ".join(cells.get(s, "") for s in starts) + " |")
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ramp_error.json").write_text(json.dumps(reading, indent=2) + "\n")
    (out / "ramp_error.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
