"""Read the robustness sweep (configs/robustness.yaml): per method, the range of its knob over which no
seed collapses or explodes, on each task, side by side; finished runs only.

A run collapses when the mean of H/H0 over its last quarter of steps is below 0.1 and explodes when it
is above 1.2 (the definitions of ``entropyctl report``). A knob value is "ok" on a task when none of its
seeds collapses or explodes; a method's range is the contiguous run of ok values around its default
(for ``fixed`` the ok values themselves). Besides those, per arm: held-out pass@1 / pass@8 after
training (mean ± sample std over seeds), the lowest H/H0 of any seed, the share of steps after the
first in-band step whose 50-step moving average of the entropy is within ±20 % of H* (a fixed-α run,
which has no target, against the 0.4·H0 AER's defaults would set on it), and for ``aer`` the share of
steps with α at a bound. With ``--out`` it also draws ``robustness.png``: per task,
the last-quarter H/H0 and held-out pass@1 of every seed against each knob.

    python benchmarks/robustness_reading.py benchmarks/robustness/level2 benchmarks/robustness/levels12 \
        --out benchmarks/robustness

A task whose arms ran into several study folders (the same config, warm start and seeds) is given as
``NAME=DIR,DIR,...``: the arms of every folder, read as one task called NAME (an arm in two folders
keeps the runs of the first folder that has each seed).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from entropyctl.controllers.band import HALF_WIDTH, WINDOW, alpha_at_bound, read_band
from entropyctl.experiments.aggregate import COLLAPSE_RATIO, EXPLOSION_RATIO, load_run

#: the knob each method is swept over, as a path into the run's resolved controller config
KNOBS = {
    "fixed α": ("fixed", ("alpha",)),
    "aer step κ": ("aer", ("update", "step")),
    "aer τ": ("aer", ("anchor", "tau")),
    "aer α_min": ("aer", ("update", "alpha_min")),
}
#: the library defaults: an arm belongs to one knob's sweep when its other knobs are at these
DEFAULTS = {"aer step κ": 0.05, "aer τ": 0.4, "aer α_min": 1e-5}
#: settings no sweep moves: an aer arm that changes one of them (a candidate default) is in no sweep
HELD: dict[tuple[str, ...], Any] = {
    ("update", "proportional"): 2.0,
    ("anchor", "steps"): 1,
    ("update", "lower_ratio"): 1.0,
    ("update", "climb_boost"): 0.0,
    ("update", "rearm_at_target"): False,
    ("update", "conditional"): False,
    ("update", "linear"): 0.0,
    ("allocation", "rule"): "threshold",
}
#: a fixed-α run is read in band against BAND_TAU·H0, the target AER's defaults would set on it
BAND_TAU = DEFAULTS["aer τ"]


def _get(config: dict[str, Any], path: tuple[str, ...], default: Any = None) -> Any:
    """The value at ``path``; ``default`` where a config written by hand leaves it out."""
    for key in path:
        if default is not None and key not in config:
            return default
        config = config[key]
    return config


def read_run(run: Path, band_tau: float | None = None) -> dict[str, Any] | None:
    """One finished run's numbers; None when the run is missing or unfinished. ``band_tau``: a run
    without a target of its own (fixed α) is read in band against ``band_tau``·H0 as well."""
    if not (run / "summary.json").exists():
        return None
    record = load_run(run)
    if not record.finished:
        return None
    after, before = record.summary.after or {}, record.summary.before or {}
    # NaN-ignoring, as the report's reading: a step without tokens logs NaN (a NaN mean compared as neither
    # collapse nor explosion)
    last_quarter = float(np.nanmean(record.last_quarter("entropy"))) / record.h0()
    out: dict[str, Any] = {
        "run": f"{run.parent.name}/{run.name}",  # <arm slug>/seed<N>: the same wherever the runs lie
        "steps": len(record.steps),
        "controller": record.config["controller"],
        "h0": record.h0(),
        "ratio_last_quarter": last_quarter,
        "collapse": last_quarter < COLLAPSE_RATIO,
        "explosion": last_quarter > EXPLOSION_RATIO,
        "pass@1": after["pass@1"],
        "pass@8": after.get("pass@8", math.nan),
        "before_pass@1": before["pass@1"],
    }
    if record.config["controller"]["name"] == "aer":
        band = read_band(record.metrics["entropy"], record.metrics["target_entropy"], start=WINDOW - 1)
        out["first_in_band"] = None if band.first_in_band is None else band.first_in_band + 1
        out["in_band_share"] = band.in_band_share
        update = record.config["controller"]["update"]
        alphas = record.metrics["alpha"]
        # `update: {rule: none}` holds α at alpha_0 and has no bounds: it is never at one
        low = float(update.get("alpha_min", -math.inf))
        at_bound = alpha_at_bound(alphas, low, float(update.get("alpha_max", math.inf)))
        # at the floor while the step's reading is above H*: no bonus is wanted there (benign); any other
        # step at a bound is the loop saturated against its error
        at_floor = alpha_at_bound(alphas, low, math.inf)
        benign = at_floor & (record.metrics["entropy"] > record.metrics["target_entropy"])
        out["alpha_at_bound"] = float(at_bound.mean())
        out["alpha_floor_above_target"] = float(benign.mean())
        out["alpha_bound_otherwise"] = float((at_bound & ~benign).mean())
        out["alpha_range"] = [float(alphas.min()), float(alphas.max())]
    elif band_tau is not None:
        target = band_tau * record.h0()
        out["in_band_share"] = read_band(record.metrics["entropy"], target, start=WINDOW - 1).in_band_share
        out["band_tau"] = band_tau
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _planned_arms(folders: list[Path], seeds: list[int] | None) -> dict[str, dict[int, Path]]:
    """label -> {seed: run directory} over the study folders, in their order: an arm's own seeds
    where its manifest gives them (arms added with other seeds), else the study's; a seed already found
    in an earlier folder keeps that folder's run."""
    arms: dict[str, dict[int, Path]] = {}
    for folder in folders:
        manifest = json.loads((folder / "ablation.json").read_text())
        for arm in manifest["arms"]:
            planned = seeds if seeds is not None else arm.get("seeds", manifest["seeds"])
            runs = arms.setdefault(arm["label"], {})
            for seed in planned:
                runs.setdefault(int(seed), folder / arm["slug"] / f"seed{seed}")
    return arms


def read_task(
    task: Path | list[Path], seeds: list[int] | None = None, name: str | None = None
) -> dict[str, Any]:
    """Every arm of the ablation in ``task`` (one study folder, or several holding arms of one task), over
    ``seeds`` (default: each manifest's)."""
    folders = [task] if isinstance(task, Path) else list(task)
    arms: dict[str, Any] = {}
    for label, planned_runs in _planned_arms(folders, seeds).items():
        planned = sorted(planned_runs)
        # a fixed-α run has no target of its own: it is read in band against the one AER's defaults set
        runs = [read_run(planned_runs[seed], BAND_TAU) for seed in planned]
        done = [r for r in runs if r is not None]
        if not done:
            continue
        controller = done[0]["controller"]
        entry: dict[str, Any] = {
            "seeds_finished": len(done),
            "seeds_planned": len(planned),
            "knobs": {
                method: float(_get(controller, path))
                for method, (name, path) in KNOBS.items()
                if controller["name"] == name
            },
            "in_sweep": controller["name"] != "aer"
            or all(_get(controller, path, value) == value for path, value in HELD.items()),
            "collapsed": sum(r["collapse"] for r in done),
            "exploded": sum(r["explosion"] for r in done),
            "ratio_last_quarter": _mean_std([r["ratio_last_quarter"] for r in done]),
            "ratio_min": min(r["ratio_last_quarter"] for r in done),
            "pass@1": _mean_std([r["pass@1"] for r in done]),
            "pass@8": _mean_std([r["pass@8"] for r in done]),
            "before_pass@1": _mean_std([r["before_pass@1"] for r in done]),
            "runs": done,
        }
        entry["in_band_share"] = _mean_std([r["in_band_share"] for r in done])
        if controller["name"] == "aer":
            for key in ("alpha_at_bound", "alpha_floor_above_target", "alpha_bound_otherwise"):
                entry[key] = _mean_std([r[key] for r in done])
        arms[label] = entry
    return {"task": name or folders[0].name, "arms": arms}


def sweep_arms(task: dict[str, Any], method: str) -> list[dict[str, Any]]:
    """The arms of ``method``'s sweep on ``task``, by knob value: a sweep of one knob, the method's
    other knobs at their defaults (the τ arms are not step values), candidates left out."""
    arms = [
        arm
        for arm in task["arms"].values()
        if method in arm["knobs"]
        and arm["in_sweep"]
        and all(arm["knobs"][other] == DEFAULTS[other] for other in arm["knobs"] if other != method)
    ]
    return sorted(arms, key=lambda arm: arm["knobs"][method])


def ok_range(task: dict[str, Any], method: str) -> dict[str, Any]:
    """The knob values of ``method`` on ``task`` (complete arms only), which are ok, and the range."""
    points = sorted(
        (arm["knobs"][method], arm["collapsed"] + arm["exploded"] == 0)
        for arm in sweep_arms(task, method)
        if arm["seeds_finished"] == arm["seeds_planned"]
    )
    values = [v for v, _ in points]
    ok = [v for v, good in points if good]
    if method in DEFAULTS and DEFAULTS[method] in values:
        # the contiguous ok stretch that holds the default
        i = values.index(DEFAULTS[method])
        if not points[i][1]:
            ok = []
        else:
            lo = hi = i
            while lo > 0 and points[lo - 1][1]:
                lo -= 1
            while hi < len(points) - 1 and points[hi + 1][1]:
                hi += 1
            ok = values[lo : hi + 1]
    positive = [v for v in ok if v > 0]
    return {
        "values": values,
        "ok": ok,
        "span": (max(positive) / min(positive)) if len(positive) > 1 else (1.0 if positive else 0.0),
    }


def _fmt(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.3f} ± {pair[1]:.3f}"


def render(tasks: dict[str, dict[str, Any]]) -> str:
    names = list(tasks)
    lines = [
        "# Robustness sweep: fixed α against AER's own knobs",
        "",
        f"Collapse: H/H0 over the last quarter < {COLLAPSE_RATIO}; explosion: > {EXPLOSION_RATIO}. A knob "
        "value is ok when none of its seeds collapses or explodes. `min H/H0` is the lowest seed's "
        f"last-quarter H/H0; `in band` the share of steps after the first in-band one whose {WINDOW}-step "
        f"average entropy is within ±{HALF_WIDTH * 100:.0f} % of H* (for fixed α, of {BAND_TAU:g}·H0, the "
        "target AER's defaults would set on the run); `α at a bound` (aer) the share of steps "
        "with α at alpha_min or alpha_max, and of those the steps at alpha_min whose entropy reading is above "
        "H* (no bonus is wanted there; the rest is the loop saturated against its error). Mean ± sample std "
        "over seeds.",
        "",
        "## Range of each knob that neither collapses nor explodes",
        "",
        "| method | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for method in KNOBS:
        cells = []
        for name in names:
            r = ok_range(tasks[name], method)
            if not r["values"]:
                cells.append("not run")
            elif not r["ok"]:
                cells.append(f"none of {_values(r['values'])}")
            else:
                span = f" ({r['span']:.0f}×)" if r["span"] > 1 else ""
                cells.append(f"{_values(r['ok'])}{span} of {_values(r['values'])}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    for name in names:
        lines += [
            "",
            f"## {name}",
            "",
            "| arm | seeds | H/H0 (last ¼) | min H/H0 | collapse | explosion | pass@1 before | pass@1 | pass@8 "
            "| in band | α at a bound | of which at the floor, H > H* |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for label, arm in tasks[name]["arms"].items():
            band = _fmt(arm["in_band_share"]) if "in_band_share" in arm else "—"
            bound = _fmt(arm["alpha_at_bound"]) if "alpha_at_bound" in arm else "—"
            benign = _fmt(arm["alpha_floor_above_target"]) if "alpha_floor_above_target" in arm else "—"
            lines.append(
                f"| `{label}` | {arm['seeds_finished']}/{arm['seeds_planned']} | {_fmt(arm['ratio_last_quarter'])} | "
                f"{arm['ratio_min']:.3f} | {arm['collapsed']} | {arm['exploded']} | "
                f"{_fmt(arm['before_pass@1'])} | {_fmt(arm['pass@1'])} | "
                f"{_fmt(arm['pass@8'])} | {band} | {bound} | {benign} |"
            )
        lines += ["", _before_line(tasks[name]["arms"])]
    return "\n".join(lines) + "\n"


def _same_start(first: dict[str, Any], second: dict[str, Any]) -> bool:
    """Two arms started from one warm start: the same before-RL pass@1 on every seed both ran (the same
    warm start scores the same on the same held-out draw; arms may have run different seeds)."""
    before = [
        {run["run"].rsplit("/", 1)[-1]: run["before_pass@1"] for run in arm["runs"]}
        for arm in (first, second)
    ]
    common = before[0].keys() & before[1].keys()
    return bool(common) and all(before[0][seed] == before[1][seed] for seed in common)


def _before_line(arms: dict[str, Any]) -> str:
    """Before-RL pass@1: one line when every arm started from the same warm start, else which arms
    started from another one and are not comparable. Arms are grouped by warm start (compared seed by
    seed); the largest group is the study's, quoted with its arm of the most seeds."""
    groups: list[list[str]] = []
    for label, arm in arms.items():
        group = next((g for g in groups if _same_start(arms[g[0]], arm)), None)
        if group is None:
            groups.append([label])
        else:
            group.append(label)
    if not groups:
        return ""
    common = max(groups, key=len)
    reference = max(common, key=lambda label: arms[label]["seeds_finished"])
    line = f"Before RL (warm start, same held-out set): pass@1 {_fmt(arms[reference]['before_pass@1'])}."
    others = [
        f"`{label}` {_fmt(arms[label]['before_pass@1'])}" for g in groups if g is not common for label in g
    ]
    if others:
        line += (
            " Another pass@1 before RL on the same prompts, i.e. another warm start (the cached one was "
            "rebuilt in between), so these arms' numbers are not comparable with the others': "
            + ", ".join(others)
            + "."
        )
    return line


def _values(values: list[float]) -> str:
    return ", ".join(f"{v:g}" for v in values)


#: the knobs the figure shows, one column each (α_min has two values: the table is enough)
PLOTTED = ("fixed α", "aer step κ", "aer τ")


def plot(tasks: dict[str, dict[str, Any]], path: Path) -> None:
    """``robustness.png``: one row per task and quantity (last-quarter H/H0, held-out pass@1), one
    column per knob; each seed a dot, the mean over seeds a line, the collapse and explosion lines
    dashed. Only the arms of each knob's sweep (as in the range table)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    names = list(tasks)
    fig, axes = plt.subplots(  # a row shares its y axis: the knobs' effects side by side on one scale
        2 * len(names),
        len(PLOTTED),
        figsize=(4.2 * len(PLOTTED), 3.0 * 2 * len(names)),
        squeeze=False,
        sharey="row",
    )
    for row, name in enumerate(names):
        for col, method in enumerate(PLOTTED):
            arms = sweep_arms(tasks[name], method)
            if not arms:  # not swept on this task: an empty panel (a log axis without data cannot draw)
                for k in (0, 1):
                    axes[2 * row + k][col].set_axis_off()
                continue
            values = [arm["knobs"][method] for arm in arms]
            # α = 0 has no place on a log axis: it is drawn one decade below the smallest α > 0
            positive = [v for v in values if v > 0]
            floor = min(positive) / 10 if positive else 1.0
            xs = [v if v > 0 else floor for v in values]
            for k, (key, label) in enumerate(
                (("ratio_last_quarter", "H/H0, last quarter"), ("pass@1", "pass@1"))
            ):
                ax = axes[2 * row + k][col]
                for x, arm in zip(xs, arms, strict=True):
                    ys = [run[key] for run in arm["runs"]]
                    ax.scatter([x] * len(ys), ys, s=14, color="tab:blue", alpha=0.6)
                ax.plot(xs, [arm[key][0] for arm in arms], color="tab:blue")
                if key == "ratio_last_quarter":
                    ax.axhline(COLLAPSE_RATIO, color="tab:red", linestyle="--", linewidth=1)
                    ax.axhline(EXPLOSION_RATIO, color="tab:orange", linestyle="--", linewidth=1)
                    ax.set_yscale("log")
                elif arms:
                    ax.axhline(arms[0]["before_pass@1"][0], color="gray", linestyle=":", linewidth=1)
                if method != "aer τ":
                    ax.set_xscale("log")
                ax.set_xticks(xs, [f"{v:g}" for v in values])
                ax.xaxis.set_minor_formatter(NullFormatter())
                ax.set_title(f"{name}: {method}", fontsize=9)
                ax.set_ylabel(label, fontsize=8)
                ax.tick_params(labelsize=7)
    fig.suptitle(
        "Robustness: each seed a dot, the mean a line; dashed: collapse / explosion; dotted: pass@1 before RL",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "tasks",
        nargs="+",
        help="ablation output directories, one per task; NAME=DIR,DIR,... reads several folders as one task",
    )
    parser.add_argument("--out", type=Path, default=None, help="write reading.md / reading.json here")
    parser.add_argument(
        "--seeds", default=None, help="read only these seeds, e.g. 0,1 (default: the manifest's)"
    )
    args = parser.parse_args(argv)
    seeds = None if args.seeds is None else [int(s) for s in args.seeds.split(",")]
    tasks = {}
    for spec in args.tasks:
        # NAME=DIR,...: a name has no "/" (a folder's "=" comes after one, as in an arm's slug)
        name, dirs = spec.split("=", 1) if "=" in spec.split("/")[0] else ("", spec)
        folders = [Path(d) for d in dirs.split(",")]
        task = read_task(folders, seeds, name or None)
        tasks[task["task"]] = task
    text = render(tasks)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "reading.md").write_text(text)
        ranges = {m: {n: ok_range(t, m) for n, t in tasks.items()} for m in KNOBS}
        (args.out / "reading.json").write_text(
            json.dumps({"tasks": tasks, "ranges": ranges}, indent=1) + "\n"
        )
        plot(tasks, args.out / "robustness.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
