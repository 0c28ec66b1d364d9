"""How much pairing by seed buys in the committed ten-seed comparisons, read off their runs.

Every ten-seed spread (``benchmarks/seed_spread.py``) gives two standard errors for a difference between
two arms: treating the arms as independent, and paired by seed (the runs of one seed share the warm
start, the prompts of each step and the held-out evaluation's prompts). Pairing helps only as far as
the two arms' per-seed results go together. This reading says, for each committed spread:

* **the first step whose batch reward differs** between the two arms' runs of a seed (median and range
  over the seeds): the runs are the same run until a sampled completion changes, and any difference in
  the coefficient changes the weights, and soon a sample, after the first update;
* **the correlation across seeds** of each number the spread compares (in band, last-quarter H/H0,
  held-out pass@1 and pass@8) between the two arms, and the **ratio of the paired standard error to the
  unpaired one**: near 1, pairing buys nothing and the paired difference is as uncertain as two
  independent samples of ten runs.

Writes benchmarks/results/pairing.{md,json}.

    python benchmarks/pairing.py
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from seed_spread import KEYS, pooled_runs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: the committed seed spreads (folders relative to the checkout); those of two arms over ten or more
#: paired seeds are read
SPREADS = sorted(
    p.relative_to(ROOT).parent for p in (ROOT / "benchmarks" / "robustness").rglob("seed_spread.json")
)


def first_different_reward(first: Path, second: Path) -> int | None:
    """The first step (as logged) whose batch reward differs between two runs' metrics.csv; None if none."""
    with first.open(newline="") as f, second.open(newline="") as g:
        for a, b in zip(csv.DictReader(f), csv.DictReader(g), strict=False):
            if a["reward"] != b["reward"]:
                return int(a["step"])
    return None


def read_spread(folder: Path) -> dict[str, Any] | None:
    """One committed spread's pairing: None when it is not two arms over the same ten or more seeds."""
    spread = json.loads((ROOT / folder / "seed_spread.json").read_text())
    arms = list(spread["arms"])
    if len(arms) != 2 or spread.get("paired_difference") is None:
        return None
    seeds = spread["paired_difference"]["seeds"]
    if len(seeds) < 10:
        return None
    folders = [ROOT / f for f in spread["folders"]]
    tau = 0.4 if any("in_band_against" in a for a in spread["arms"].values()) else None
    runs = [pooled_runs(folders, arm, tau) for arm in arms]
    # each run's folder as pooled_runs found it (the study folder that holds that arm's seed)
    steps = [
        first_different_reward(
            *(
                Path(run[seed]["folder"]) / arm / f"seed{seed}" / "metrics.csv"
                for run, arm in zip(runs, arms, strict=True)
            )
        )
        for seed in seeds
    ]
    known = [s for s in steps if s is not None]
    out: dict[str, Any] = {
        "folder": str(folder),
        "arms": arms,
        "seeds": seeds,
        "first_different_reward": {
            "median": statistics.median(known) if known else None,
            "min": min(known) if known else None,
            "max": max(known) if known else None,
            "never": len(steps) - len(known),
        },
    }
    for key in KEYS:
        if spread["paired_difference"].get(key) is None or spread["difference"].get(key) is None:
            out[key] = None
            continue
        a = [float(runs[0][s][key]) for s in seeds]
        b = [float(runs[1][s][key]) for s in seeds]
        corr = float(np.corrcoef(a, b)[0, 1]) if np.std(a) > 0 and np.std(b) > 0 else None
        ratio = spread["paired_difference"][key]["se"] / spread["difference"][key]["se"]
        out[key] = {"correlation": corr, "se_ratio": ratio}
    return out


def table(rows: list[dict[str, Any]]) -> str:
    head = ["spread", "arms", "seeds", "first step with a different reward: median (min … max)"]
    head += [f"{label}: r, paired/unpaired se" for label in KEYS.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        first = row["first_different_reward"]
        cells = [
            f"`{row['folder'].removeprefix('benchmarks/robustness/')}`",
            " vs ".join(f"`{a}`" for a in row["arms"]),
            str(len(row["seeds"])),
            f"{first['median']:g} ({first['min']} … {first['max']})"
            if first["median"] is not None
            else "never",
        ]
        for key in KEYS:
            cell = row[key]
            if cell is None:
                cells.append("—")
            else:
                r = "—" if cell["correlation"] is None else f"{cell['correlation']:+.2f}"
                cells.append(f"{r}, {cell['se_ratio']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    summary = ["| median over the spreads | | | " + _median(rows, None) + " | "]
    summary[0] += " | ".join(_median(rows, key) for key in KEYS) + " |"
    return "\n".join(lines + summary) + "\n"


def _median(rows: list[dict[str, Any]], key: str | None) -> str:
    if key is None:
        return f"{statistics.median(r['first_different_reward']['median'] for r in rows):g}"
    cells = [r[key] for r in rows if r[key] is not None]
    corr = [c["correlation"] for c in cells if c["correlation"] is not None]
    return f"{statistics.median(corr):+.2f}, {statistics.median(c['se_ratio'] for c in cells):.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    rows = [row for folder in SPREADS if (row := read_spread(folder)) is not None]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pairing.json").write_text(json.dumps({"spreads": rows}, indent=1) + "\n")
    text = table(rows)
    (args.out / "pairing.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
