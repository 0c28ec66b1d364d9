"""Read the token-level study (configs/ablation_token_level.yaml, 1500 steps) side by side with the no-bonus and
aer arms of the 3000-step collapse study (benchmarks/ablation_collapse_v3) cut at the same step.

The cut is exact for training: the two configs differ only in the controller and ``trainer.steps`` (checked
here, run by run), the learning rate is constant after warm-up, and a run is bitwise reproducible, so a
3000-step run's first 1500 steps are what a 1500-step run gives. Held-out pass@k at step 1500 is the
3000-step run's ``step_1500`` evaluation and the 1500-step run's final one: the same held-out prompts and
samples per prompt, drawn with another sampling seed (the seed is derived from the evaluation's tag).

Per arm, mean ± sample std over seeds: held-out pass@1 / pass@8 at the cut, H/H0 over the last quarter of
the steps up to the cut (the report's definition), collapses (H/H0 < 0.1 there), the 50-step moving
average of H/H0 at steps 500 / 1000 / 1500, and, for per-token controllers, the share of tokens they acted
on. Writes <study>/reading.{md,json} and entropy_1500.png (the 50-step moving average of H/H0 per arm).

    python benchmarks/token_level_reading.py benchmarks/ablation_token_level \
        --reuse benchmarks/ablation_collapse_v3 --arms fixed:alpha=0 aer --at 1500
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from entropyctl.experiments.aggregate import RunRecord, find_runs

WINDOW = 50
#: Config keys allowed to differ between a reused run and the study's runs.
ALLOWED = ("controller.", "trainer.steps")


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two run configs, other than the controller and the length."""
    fa, fb = _flat(a), _flat(b)
    return sorted(
        key for key in set(fa) | set(fb) if fa.get(key) != fb.get(key) and not key.startswith(ALLOWED)
    )


def _eval_at(run: RunRecord, at: int) -> dict[str, Any] | None:
    evals = run.summary.evals if hasattr(run.summary, "evals") else None
    evals = evals or {}
    if f"step_{at}" in evals:
        return evals[f"step_{at}"]
    steps = run.steps
    if steps.size and int(steps[-1]) == at and evals.get("after"):
        return evals["after"]
    return None


def read_run(run: RunRecord, at: int) -> dict[str, Any]:
    steps = run.steps
    keep = steps <= at
    ratio = run.entropy_ratio()[keep]
    n = int(keep.sum())
    quarter = ratio[n - max(1, n // 4) :]
    moving = np.convolve(ratio, np.ones(WINDOW) / WINDOW, mode="valid") if n >= WINDOW else np.array([])
    at_steps = {s: float(moving[s - WINDOW]) for s in (500, 1000, 1500) if WINDOW <= s <= n}
    evaluation = _eval_at(run, at)
    share = run.metrics.get("controller/token_selected_share")
    before = (run.summary.evals or {}).get("before") if hasattr(run.summary, "evals") else None
    return {
        "path": str(run.path),
        "steps": n,
        "h0": run.h0(),
        "h_over_h0_last_quarter": float(np.nanmean(quarter)) if quarter.size else math.nan,
        "moving_h_over_h0": at_steps,
        "pass@1": evaluation.get("pass@1") if evaluation else None,
        "pass@8": evaluation.get("pass@8") if evaluation else None,
        "before_pass@1": before.get("pass@1") if before else None,
        "before_pass@8": before.get("pass@8") if before else None,
        "token_selected_share": float(np.nanmean(share[keep])) if share is not None else None,
    }


def _mean_std(values: list[float | None]) -> tuple[float, float, int]:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return math.nan, math.nan, 0
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else math.nan, len(finite)


def _cell(values: list[float | None], digits: int = 3) -> str:
    mean, std, n = _mean_std(values)
    if n == 0:
        return "—"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else "")


def plot(curves: dict[str, list[np.ndarray]], at: int, path: Path) -> None:
    """The 50-step moving average of H/H0 per arm (seed mean, band = min..max over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for arm, runs in curves.items():
        smooth = np.stack([np.convolve(r, np.ones(WINDOW) / WINDOW, mode="valid") for r in runs])
        x = np.arange(WINDOW, WINDOW + smooth.shape[1])
        (line,) = ax.plot(x, smooth.mean(0), label=f"{arm} ({len(runs)} seeds)")
        ax.fill_between(x, smooth.min(0), smooth.max(0), color=line.get_color(), alpha=0.15)
    ax.axhline(0.4, color="grey", linestyle="--", linewidth=0.8, label="aer's target 0.4·H0")
    ax.axhline(0.1, color="black", linestyle=":", linewidth=0.8, label="collapse 0.1·H0")
    ax.set(xlabel="step", ylabel=f"entropy / H0 ({WINDOW}-step average)", xlim=(0, at), ylim=(0, None))
    ax.set_title("Entropy collapse task: per-token methods vs aer and no bonus")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("study", type=Path)
    parser.add_argument("--reuse", type=Path, required=True, help="the longer study whose arms are cut")
    parser.add_argument("--arms", nargs="+", default=["fixed:alpha=0", "aer"], help="arms taken from --reuse")
    parser.add_argument("--at", type=int, default=1500, help="the step at which every arm is read")
    parser.add_argument(
        "--out", type=Path, default=None, help="where reading.{md,json} go (default: the study)"
    )
    args = parser.parse_args()
    out = args.out or args.study

    study = find_runs(args.study)
    reused = {arm: runs for arm, runs in find_runs(args.reuse).items() if arm in args.arms}
    missing = [arm for arm in args.arms if arm not in reused]
    if missing:
        raise SystemExit(f"--reuse {args.reuse} has no arm {missing}")
    study_runs = [run for runs in study.values() for run in runs]
    for runs in reused.values():
        for run in runs:
            same_seed = [other for other in study_runs if other.seed == run.seed]
            reference = (same_seed or study_runs)[0]
            differences = config_differences(run.config, reference.config)
            if not same_seed:  # compared with another seed's run: the seed itself may differ
                differences = [key for key in differences if key != "seed"]
            if differences:
                raise SystemExit(
                    f"{run.path} differs from the study's config in {differences}: cannot reuse it"
                )

    arms: dict[str, list[dict[str, Any]]] = {}
    curves: dict[str, list[np.ndarray]] = {}
    for arm, runs in [*reused.items(), *study.items()]:
        done = [run for run in runs if int(run.steps.max(initial=0)) >= args.at]
        arms[arm] = [read_run(run, args.at) for run in done]
        curves[arm] = [run.entropy_ratio()[run.steps <= args.at] for run in done]

    lines = [
        f"# Token-level study read at step {args.at}",
        "",
        f"Study: `{args.study.name}`; arms {', '.join(f'`{a}`' for a in args.arms)} from `{args.reuse.name}` cut at "
        f"step "
        f"{args.at} (configs equal but for the controller and the length: checked per run).",
        "Mean ± sample std over seeds. H/H0 over the last quarter of steps 1..cut; collapse = H/H0 < 0.1 there.",
        "",
        "| arm | seeds | pass@1 | pass@8 | H/H0 (last ¼) | collapse | H/H0 @500 | @1000 | @1500 | tokens acted on |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, rows in arms.items():
        ratios = [r["h_over_h0_last_quarter"] for r in rows]
        collapsed = sum(1 for v in ratios if v < 0.1)
        share = [r["token_selected_share"] for r in rows]
        lines.append(
            f"| `{arm}` | {len(rows)} | {_cell([r['pass@1'] for r in rows])} | {_cell([r['pass@8'] for r in rows])} "
            f"| {_cell(ratios, 2)} | {collapsed}/{len(rows)} | "
            + " | ".join(_cell([r["moving_h_over_h0"].get(s) for r in rows], 2) for s in (500, 1000, 1500))
            + f" | {_cell(share, 4) if any(v is not None for v in share) else '—'} |"
        )
    befores = [r for rows in arms.values() for r in rows]
    lines += [
        "",
        f"Before RL (the shared warm start): pass@1 {_cell([r['before_pass@1'] for r in befores])}, "
        f"pass@8 {_cell([r['before_pass@8'] for r in befores])}.",
        "",
        "Per run (pass@1 / pass@8 at the cut, H/H0 last quarter):",
        "",
    ]
    for arm, rows in arms.items():
        for r in rows:
            lines.append(
                f"- `{arm}` {Path(r['path']).name}: {r['pass@1']:.3f} / {r['pass@8']:.3f}, "
                f"{r['h_over_h0_last_quarter']:.3f}"
            )
    for row in (r for rows in arms.values() for r in rows):  # paths relative to the study, as committed
        row["path"] = str(Path(row["path"]).relative_to(Path(row["path"]).parents[2]))
    out.mkdir(parents=True, exist_ok=True)
    lines += ["", "![entropy](entropy_1500.png)"]
    (out / "reading.md").write_text("\n".join(lines) + "\n")
    (out / "reading.json").write_text(json.dumps({"at": args.at, "arms": arms}, indent=2) + "\n")
    plot(curves, args.at, out / "entropy_1500.png")
    print("\n".join(lines))
    print(f"wrote {out / 'reading.md'}, reading.json and entropy_1500.png")


if __name__ == "__main__":
    main()
