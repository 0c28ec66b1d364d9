"""How far three seeds are from the answer: per arm, the issue-12 numbers of runs pooled from several
study folders (the same config and warm start, other seeds), with the mean, the seed spread and the
standard error of the mean, and the difference between two arms with its standard error: once as
independent samples and once paired by seed (the seeds both arms ran).

    python benchmarks/seed_spread.py benchmarks/robustness/level2 benchmarks/robustness/level2_seeds \
        --arms aer aer_update.step=0.15 --out benchmarks/robustness/level2_seeds

Each folder is an ``entropyctl ablate`` output; an arm is named by its slug (its folder). A run appears
once: the same <arm>/seed<N> in two folders is an error. Writes seed_spread.json and seed_spread.md.

"In band" is the share of the steps from the first in-band one; a run that never reaches the band
counts as 0 here (it was in band on none of its steps), where ``band_misses.py`` and ``entropyctl
report`` leave it out and count it apart ("n never in band"), so their means of the same runs can be
higher (e.g. no bonus on levels 1–2, ten seeds: 0.460 here, 0.511 over the nine that reached it).

``--band-tau T``: an arm without a target of its own (fixed α) is read in band against T·H0, H0 its
first entropy reading — the target AER's ``anchor: {mode: initial, tau: T, steps: 1}`` would have set
on the same seed (the same warm start and first batch give the same first reading); its rows say so.

The last column is the bonus a run delivered: the mean over its steps of ``coef_mean``, the
token-weighted coefficient a step applied (α·w(acc) under AER, α under a fixed coefficient; 0 on a
step ``algorithm.skip_no_signal`` left alone), as the
median over seeds with the smallest and largest (one seed's climb can be most of a mean), the
medians of the same mean over the run's first and last quarter (when the bonus acted), and the ratio
of the two arms' medians.
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
from robustness_reading import read_run  # noqa: E402

from entropyctl.experiments.aggregate import ReportError, pooled_seeds  # noqa: E402
from entropyctl.experiments.stats import mean_std, paired_difference  # noqa: E402
from entropyctl.trainer.run_dir import coefficient_acted  # noqa: E402

#: the numbers compared, by their key in robustness_reading.read_run
#: (an arm without a target, e.g. fixed α, has no in-band share: "—" there and in the difference)
KEYS = {
    "in_band_share": "in band",
    "ratio_last_quarter": "H/H0 (last ¼)",
    "pass@1": "pass@1",
    "pass@8": "pass@8",
}


def pooled_runs(folders: list[Path], arm: str, band_tau: float | None = None) -> dict[int, dict[str, Any]]:
    """The arm's finished runs pooled over ``folders``, by seed."""

    def read(run: Path) -> dict[str, Any] | None:
        record = read_run(run, band_tau)
        if record is not None:
            record["folder"] = str(run.parent.parent)
            record["bonus"], record["bonus_first"], record["bonus_last"] = _mean_coefficients(
                run / "metrics.csv"
            )
        return record

    try:
        return pooled_seeds(folders, arm, read)
    except ReportError as error:
        raise SystemExit(str(error)) from None


def _mean_coefficients(metrics: Path) -> tuple[float, float, float]:
    """The run's mean coefficient that acted (``coef_mean``, 0 on a skipped step) over all its steps,
    its first quarter and its last quarter."""
    with metrics.open(newline="") as f:
        coef = [coefficient_acted(row) for row in csv.DictReader(f)]
    quarter = max(len(coef) // 4, 1)
    return statistics.fmean(coef), statistics.fmean(coef[:quarter]), statistics.fmean(coef[-quarter:])


def summarise(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    n = len(values)
    mean, std = mean_std(values)
    return {"n": n, "mean": mean, "std": std, "se": std / math.sqrt(n)}


def paired_by_seed(
    first: dict[int, dict[str, Any]], second: dict[int, dict[str, Any]]
) -> tuple[dict[str, Any], list[str]]:
    """Per key, the mean of the per-seed differences (second − first) over the seeds both arms ran,
    ± the standard error of that mean: the runs of one seed share the warm start and the data order,
    so the pairing removes what the seed alone sets (the row above treats the arms as independent).
    It removes little where the arms' coefficients differ from the first update: their runs of a seed
    sample differently within ~3-30 steps, and the paired standard error is then about the independent
    one (``benchmarks/pairing.py``)."""
    common = sorted(set(first) & set(second))
    out: dict[str, Any] = {"seeds": common}
    cells = []
    for key in KEYS:
        pairs = [(first[seed], second[seed]) for seed in common]
        if not pairs or any(key not in a or key not in b for a, b in pairs):
            out[key] = None
            cells.append("—")
            continue
        delta, se = paired_difference([float(a[key]) for a, _ in pairs], [float(b[key]) for _, b in pairs])
        out[key] = {"delta": delta, "se": se}
        cells.append(f"{delta:+.3f} ± {se:.3f}")
    return out, cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--arms", nargs=2, required=True, metavar="SLUG", help="two arm slugs to compare")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--band-tau", type=float, help="read an arm without a target against tau·H0")
    args = parser.parse_args()
    arms = {arm: pooled_runs(args.folders, arm, args.band_tau) for arm in args.arms}
    result: dict[str, Any] = {"folders": [str(f) for f in args.folders], "arms": {}, "difference": {}}
    lines = [
        "| arm | seeds | "
        + " | ".join(f"{label}: mean ± std (± se)" for label in KEYS.values())
        + " | bonus: median (min … max); first ¼, last ¼ |",
        "|---|---|" + "---|" * (len(KEYS) + 1),
    ]
    for arm, by_seed in arms.items():
        runs = list(by_seed.values())
        for key in KEYS:
            if 0 < sum(key in r for r in runs) < len(runs):
                raise SystemExit(f"{arm}: {KEYS[key]} is read on some seeds only")
        entry: dict[str, Any] = {key: summarise([float(r[key]) for r in runs if key in r]) for key in KEYS}
        entry["seeds"] = list(by_seed)
        bonus = [r["bonus"] for r in runs]
        entry["bonus"] = {
            "median": statistics.median(bonus),
            "min": min(bonus),
            "max": max(bonus),
            "first_quarter_median": statistics.median(r["bonus_first"] for r in runs),
            "last_quarter_median": statistics.median(r["bonus_last"] for r in runs),
        }
        result["arms"][arm] = entry
        cells = [
            "—"
            if entry[k] is None
            else f"{entry[k]['mean']:.3f} ± {entry[k]['std']:.3f} (± {entry[k]['se']:.3f})"
            for k in KEYS
        ]
        if any("band_tau" in r for r in runs):
            entry["in_band_against"] = f"{args.band_tau:g}·H0"
            cells[0] += f" (against {args.band_tau:g}·H0)"
        b = entry["bonus"]
        cells.append(
            f"{b['median']:.1e} ({b['min']:.1e} … {b['max']:.1e}); "
            f"{b['first_quarter_median']:.1e}, {b['last_quarter_median']:.1e}"
        )
        lines.append(f"| `{arm}` | {len(runs)} | " + " | ".join(cells) + " |")
    first, second = (result["arms"][arm] for arm in args.arms)
    cells = []
    for key in KEYS:
        if first[key] is None or second[key] is None:
            result["difference"][key] = None
            cells.append("—")
            continue
        delta = second[key]["mean"] - first[key]["mean"]
        se = math.hypot(first[key]["se"], second[key]["se"])
        result["difference"][key] = {"delta": delta, "se": se}
        cells.append(f"{delta:+.3f} ± {se:.3f}")
    low, high = first["bonus"]["median"], second["bonus"]["median"]
    result["difference"]["bonus_median_ratio"] = high / low if low > 0 else None
    cells.append(f"×{high / low:.3g} (medians)" if low > 0 else "—")
    lines.append("| difference (second − first) | | " + " | ".join(cells) + " |")
    result["paired_difference"], cells = paired_by_seed(*(arms[arm] for arm in args.arms))
    seeds = result["paired_difference"]["seeds"]
    lines.append(f"| paired by seed (second − first) | {len(seeds)} | " + " | ".join(cells) + " | |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "seed_spread.json").write_text(json.dumps(result, indent=2) + "\n")
    text = "\n".join(lines) + "\n"
    (args.out / "seed_spread.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
