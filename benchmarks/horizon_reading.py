"""What a candidate costs or gains, evaluation by evaluation: one arm against a base arm of the same
study (same warm start, config and seeds), paired by seed, at every held-out evaluation of a long run.

A candidate that holds the band earlier can cost accuracy early and nothing late (or the reverse); the
arm tables of ``collapse_reading.py`` give the last evaluation, the last three and step 500. This
reading gives each evaluation step K: held-out pass@1 and pass@8 of the arm minus the base's (mean of
the per-seed differences ± its standard error, std/√n), and the share of the steps in (K − every, K]
whose 50-step average of the entropy is within ±20 % of τ·H0 (H0 the controller's, as the other
readings take it), for both arms. Only finished runs, over the seeds both arms finished.

    python benchmarks/horizon_reading.py benchmarks/ablation_collapse_v5 \
        --arm aer_update.alpha_min=5.0e-4 --out benchmarks/results/floor_horizon.md

Several studies may be given (``--label`` names each in the table, in order; ``--arm`` one slug for
all or one per study); a study may pool the seeds of several folders of one config and warm start,
joined by ',' (a seed in two of them is an error). The Markdown goes to ``--out`` and the same
numbers as JSON beside it.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from collapse_reading import run_band  # noqa: E402

from entropyctl.experiments.aggregate import ReportError, pooled_seeds  # noqa: E402
from entropyctl.experiments.stats import paired_difference  # noqa: E402


def read_run(run: Path, tau: float) -> dict[str, Any] | None:
    """Held-out pass@k by evaluation step and the per-step in-band flags; None unless finished."""
    summary_path = run / "summary.json"
    if not summary_path.exists():
        return None
    summary = json.loads(summary_path.read_text())
    if summary.get("status") != "finished":
        return None
    with (run / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    _, band = run_band(rows, tau)
    evals: dict[int, dict[str, float]] = {}
    for name, values in (summary.get("evals") or {}).items():
        match = re.fullmatch(r"step_(\d+)", name)
        step = int(match.group(1)) if match else len(rows) if name == "after" else None
        if step is not None:
            evals[step] = {k: float(values[k]) for k in ("pass@1", "pass@8") if k in values}
    return {"evals": evals, "in_band": [bool(x) for x in band.in_band]}


def compare(base: str, arm: str, values: dict[str, list[float]]) -> dict[str, float]:
    """Each arm's mean over the seeds and ``arm`` − ``base`` paired by seed (``delta`` ± ``se``)."""
    delta, se = paired_difference(values[base], values[arm])
    return {
        base: statistics.fmean(values[base]),
        arm: statistics.fmean(values[arm]),
        "delta": delta,
        "se": se,
    }


def read_study(folders: list[Path], arm: str, base: str, tau: float, last: int = 0) -> dict[str, Any]:
    """The finished runs of ``base`` and ``arm`` pooled over ``folders`` (studies of one config and
    warm start that ran other seeds), paired over the seeds both finished. With ``last`` > 0, also each
    seed's mean over the last ``last`` evaluations, paired the same way (``study["last"]``)."""
    try:
        runs = {slug: pooled_seeds(folders, slug, lambda run: read_run(run, tau)) for slug in (base, arm)}
    except ReportError as error:
        raise SystemExit(str(error)) from None
    seeds = sorted(set(runs[base]) & set(runs[arm]))
    if not seeds:
        raise SystemExit(f"{','.join(map(str, folders))}: no seed finished in both {base} and {arm}")
    steps = sorted(set.intersection(*(set(runs[s][seed]["evals"]) for s in (base, arm) for seed in seeds)))
    rows = []
    previous = 0
    for step in steps:
        row: dict[str, Any] = {"step": step}
        for key in ("pass@1", "pass@8"):
            values = {s: [runs[s][seed]["evals"][step][key] for seed in seeds] for s in (base, arm)}
            row[key] = compare(base, arm, values)
        window = {
            s: statistics.fmean(statistics.fmean(runs[s][seed]["in_band"][previous:step]) for seed in seeds)
            for s in (base, arm)
        }
        row["in_band"] = window
        rows.append(row)
        previous = step
    study: dict[str, Any] = {"folders": [str(f) for f in folders], "seeds": seeds, "rows": rows}
    if last > 0:
        if last >= len(steps):
            raise SystemExit(f"--last {last}: the runs have {len(steps)} evaluations")
        tail, since = steps[-last:], steps[-last - 1]
        summary: dict[str, Any] = {"steps": tail}
        for key in ("pass@1", "pass@8"):
            means = {
                s: [statistics.fmean(runs[s][seed]["evals"][k][key] for k in tail) for seed in seeds]
                for s in (base, arm)
            }
            summary[key] = compare(base, arm, means)
        summary["in_band"] = {
            s: statistics.fmean(
                statistics.fmean(runs[s][seed]["in_band"][since : tail[-1]]) for seed in seeds
            )
            for s in (base, arm)
        }
        study["last"] = summary
    return study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "studies", nargs="+", help="a study folder, or several joined by ',' to pool their seeds"
    )
    parser.add_argument(
        "--arm", nargs="+", required=True, help="the candidate's arm slug (one, or one per study)"
    )
    parser.add_argument("--base", default="aer", help="the arm it is paired with (default aer)")
    parser.add_argument("--label", nargs="*", help="a name for each study in the table")
    parser.add_argument("--tau", type=float, default=0.4)
    parser.add_argument("--out", type=Path, required=True, help="the Markdown file (JSON beside it)")
    parser.add_argument(
        "--last", type=int, default=0, help="add a row: each seed's mean over its last N evaluations"
    )
    args = parser.parse_args()
    folders = [[Path(f) for f in study.split(",")] for study in args.studies]
    labels = args.label or [group[0].name for group in folders]
    if len(labels) != len(folders):
        raise SystemExit("--label: one name per study")
    arms = args.arm * len(folders) if len(args.arm) == 1 else args.arm
    if len(arms) != len(folders):
        raise SystemExit("--arm: one slug, or one per study")
    studies = {
        label: read_study(group, arm, args.base, args.tau, args.last)
        for label, group, arm in zip(labels, folders, arms, strict=True)
    }
    lines = [
        (f"`{arms[0]}`" if len(set(arms)) == 1 else "Each row's arm (its slug in the JSON)")
        + f" − `{args.base}`, paired by seed, at each held-out evaluation; in band: the share of the",
        "steps since the previous evaluation whose 50-step average is within ±20 % of "
        f"{args.tau:g}·H0 (mean over seeds).",
        "",
        f"| study | seeds | step | pass@1 `{args.base}` | pass@1 difference | pass@8 difference "
        f"| in band `{args.base}` | in band candidate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (label, study), arm in zip(studies.items(), arms, strict=True):
        seeds = ",".join(map(str, study["seeds"]))
        rows = list(study["rows"])
        if "last" in study:  # the mean over the last evaluations, in band since the one before them
            rows.append({**study["last"], "step": f"last {len(study['last']['steps'])} (mean)"})
        for row in rows:
            p1, p8, band = row["pass@1"], row["pass@8"], row["in_band"]
            lines.append(
                f"| {label} | {seeds} | {row['step']} | {p1[args.base]:.3f} | {p1['delta']:+.3f} ± {p1['se']:.3f} "
                f"| {p8['delta']:+.3f} ± {p8['se']:.3f} | {band[args.base]:.2f} | {band[arm]:.2f} |"
            )
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(
        json.dumps({"arms": arms, "base": args.base, "tau": args.tau, "studies": studies}, indent=1) + "\n"
    )
    print(text, end="")


if __name__ == "__main__":
    main()
