"""The report's ``report.md``: the tables per arm, per level, during training, and every run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from entropyctl.controllers.band import HALF_WIDTH, SETTLED_SHARE, WINDOW
from entropyctl.experiments.aggregate import (
    COLLAPSE_RATIO,
    EXPLOSION_RATIO,
    START_STEPS,
    ArmSummary,
    _first_and_last,
    _sorted_levels,
)

__all__ = ["render"]


def _fmt(stat: dict[str, Any] | None, digits: int = 3) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    if stat["n"] > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def _fmt_range(values: list[float] | None) -> str:
    if not values:
        return "–"
    return f"[{values[0]:.3g}, {values[1]:.3g}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _md_header(manifest: dict[str, Any], keys: list[str]) -> list[str]:
    lines = ["# Ablation report", ""]
    if manifest:
        if manifest.get("command"):
            lines += [f"Command: `{manifest['command']}`", ""]
        ran_with = {
            (
                arm.get("base_config", manifest.get("base_config")),
                json.dumps(arm.get("set", manifest.get("set"))),
            )
            for arm in manifest.get("arms", [])
        }
        if len(ran_with) > 1:  # arms added by later commands with another base config or --set
            lines += [
                f"Seeds: {manifest.get('seeds', '?')}. The arms ran with different base configs or overrides:",
                "",
            ]
            lines += [
                f"- `{arm.get('label')}`: base config `{arm.get('base_config', manifest.get('base_config'))}`, "
                f"overrides {arm.get('set', manifest.get('set')) or 'none'}"
                for arm in manifest.get("arms", [])
            ]
            lines.append("")
        else:
            lines += [
                f"Base config: `{manifest.get('base_config', '?')}`; seeds: {manifest.get('seeds', '?')}; "
                f"overrides for all arms: {manifest.get('set') or 'none'}.",
                "",
            ]
    lines += [
        "Held-out evaluation after training; mean ± std (sample std) over seeds. "
        f"`H/H0 (last ¼)` is the mean of entropy/H0 over the last quarter of training steps; "
        f"collapse = H/H0 < {COLLAPSE_RATIO}, explosion = H/H0 > {EXPLOSION_RATIO} (counted in seeds). "
        "α range is the min..max of the logged global coefficient over all steps and seeds.",
        "",
        "## Summary per arm",
        "",
    ]
    return lines


def _md_summary_table(arms: list[ArmSummary], keys: list[str]) -> list[str]:
    lines: list[str] = []
    header = ["arm", "seeds", *keys, "H/H0 (last ¼)", "collapse", "explosion", "α range", "reward (last ¼)"]
    rows = []
    for a in arms:
        n = a.numbers
        seeds = f"{n['n_finished']}/{n['n_runs']}"
        rows.append(
            [
                f"`{a.arm}`",
                seeds,
                *[_fmt(n["after"].get(k)) for k in keys],
                _fmt(n["entropy_ratio_last_quarter"], 2),
                f"{n['collapsed_runs']}/{n['n_finished']}",
                f"{n['exploded_runs']}/{n['n_finished']}",
                _fmt_range(n["alpha_range"]),
                _fmt(n["reward_last_quarter"]),
            ]
        )
    lines += [_table(header, rows), ""]
    befores = [(a.arm, a.numbers["before"]) for a in arms if a.numbers["n_finished"] and a.numbers["before"]]
    if befores and all(b == befores[0][1] for _, b in befores):
        lines += [
            "Before RL (the shared warm-start checkpoint, same evaluation): "
            + ", ".join(f"{k} = {_fmt(befores[0][1].get(k))}" for k in keys if k in befores[0][1]),
            "",
        ]
    elif befores:  # other warm starts, seeds or held-out problems: no one number stands for all
        lines += [
            "Before RL the arms' evaluations differ (other warm starts, seeds or held-out problems): "
            + "; ".join(f"`{arm}` {keys[0]} = {_fmt(b.get(keys[0]))}" for arm, b in befores if keys),
            "",
        ]
    return lines


def _md_band(arms: list[ArmSummary]) -> list[str]:
    """The arms with an entropy target, read by the band criterion (controllers.band)."""
    banded = [a for a in arms if a.numbers.get("band")]
    if not banded:
        return []
    lines = [
        "## Entropy band",
        "",
        f"Arms with an entropy target H*: the {WINDOW}-step average of the entropy within ±{HALF_WIDTH:.0%} of "
        "H* (docs/controllers.md). `first in band`: the step it first got there; the shares count the "
        "steps from there to the end; `settled in the first half`: runs in band on ≥ "
        f"{SETTLED_SHARE:.0%} of the steps from a step in their first half to the end. Mean ± std over the "
        "runs that reached the band.",
        "",
    ]
    header = [
        "arm",
        "reached",
        "first in band",
        "in band",
        "below",
        "above",
        "α at a bound",
        "settled in the first half",
    ]
    rows = []
    for a in banded:
        b = a.numbers["band"]
        rows.append(
            [
                f"`{a.arm}`",
                f"{b['reached']}/{b['runs']}",
                _fmt(b["first_in_band"], 0),
                _fmt(b["in_band"], 2),
                _fmt(b["below"], 2),
                _fmt(b["above"], 2),
                _fmt(b["alpha_at_bound"], 2),
                f"{b['settled_in_first_half']}/{b['runs']}",
            ]
        )
    return [*lines, _table(header, rows), ""]


def _md_per_group(
    arms: list[ArmSummary], keys: list[str], field: str, names: list[str], what: str
) -> list[str]:
    """A table per pass@k of ``after_<field>`` (``by_level``, ``by_set``): a row per arm, then before RL."""
    lines: list[str] = []
    for key in keys:
        lines += [f"## {key} per {what}", ""]
        rows = [
            [
                f"`{a.arm}`",
                *[_fmt(a.numbers.get(f"after_{field}", {}).get(name, {}).get(key)) for name in names],
            ]
            for a in arms
        ]
        befores = [(a.arm, a.numbers[f"before_{field}"]) for a in arms if a.numbers.get(f"before_{field}")]
        if len({repr(before) for _, before in befores}) > 1:  # warm starts differ: each arm's own row
            labelled = [(f"before RL (`{arm}`)", before) for arm, before in befores]
        else:
            labelled = [("before RL", before) for _, before in befores[:1]]
        for label, before in labelled:
            rows.append([label, *[_fmt(before.get(name, {}).get(key)) for name in names]])
        header = [f"level {name}" if field == "by_level" else f"`{name}`" for name in names]
        lines += [_table(["arm", *header], rows), ""]
    return lines


def _md_per_level(arms: list[ArmSummary], keys: list[str]) -> list[str]:
    levels = _sorted_levels(level for a in arms for level in a.numbers["after_by_level"])
    # with one level these tables repeat the summary
    return (
        _md_per_group(arms, keys, "by_level", levels, "difficulty level (held-out, after training)")
        if len(levels) > 1
        else []
    )


def _md_per_set(arms: list[ArmSummary], keys: list[str]) -> list[str]:
    sets = list(dict.fromkeys(name for a in arms for name in a.numbers.get("after_by_set", {})))
    return _md_per_group(arms, keys, "by_set", sets, "held-out set (after training)") if sets else []


def _md_training_by_level(arms: list[ArmSummary], keys: list[str]) -> list[str]:
    lines: list[str] = []
    train_levels = _sorted_levels(level for a in arms for level in a.numbers.get("training_by_level", {}))
    if train_levels:
        lines += [
            "## Training entropy and accuracy per difficulty level",
            "",
            f"Entropy in nats over the first {START_STEPS} steps → over the last quarter, and training "
            "accuracy over the last quarter (sampled rollouts, not the held-out split).",
            "",
        ]
        rows = []
        for a in arms:
            by_level = a.numbers.get("training_by_level", {})
            row = [f"`{a.arm}`"]
            for level in train_levels:
                t = by_level.get(level)
                if not t:
                    row += ["–", "–"]
                    continue
                row += [
                    f"{_fmt(t['entropy_start'], 2)} → {_fmt(t['entropy_last_quarter'], 2)}",
                    _fmt(t["accuracy_last_quarter"], 2),
                ]
            rows.append(row)
        header = ["arm"]
        for level in train_levels:
            header += [f"level {level} entropy", f"level {level} acc"]
        lines += [_table(header, rows), ""]
    return lines


def _md_during(arms: list[ArmSummary], keys: list[str]) -> list[str]:
    lines: list[str] = []
    during_steps = sorted({int(step) for a in arms for step in a.numbers.get("during", {})})
    if during_steps:
        for key in _first_and_last(keys):
            lines += [
                f"## Held-out {key} during training",
                "",
                "At the intermediate evaluations (`eval.every`); step 0 is the warm start.",
                "",
            ]
            rows = []
            for a in arms:
                during = a.numbers.get("during", {})
                rows.append(
                    [f"`{a.arm}`", *[_fmt(during.get(str(step), {}).get(key)) for step in during_steps]]
                )
            lines += [_table(["arm", *[f"step {step}" for step in during_steps]], rows), ""]
    return lines


def _md_plots(files: dict[str, str], window: int) -> list[str]:
    lines: list[str] = []
    lines += ["## Plots", ""]
    captions = {
        "entropy": f"Entropy / H0 over steps (moving average {window}; band = min..max over seeds)",
        "alpha": "Global entropy coefficient α over steps",
        "accuracy_by_level": f"Training accuracy per difficulty level (moving average {window})",
        "pass_at_k": "Held-out pass@k after training",
        "during": "Held-out pass@k during training (band = min..max over seeds)",
    }
    for key, name in files.items():
        lines += [f"![{captions.get(key, key)}]({name})", ""]
    return lines


def _md_every_run(arms: list[ArmSummary], keys: list[str]) -> list[str]:
    lines: list[str] = []
    lines += ["## Every run", ""]
    header = ["arm", "seed", "steps", *keys, "H0", "H/H0 (last ¼)", "α min", "α max", "wall s"]
    rows = []
    for a in arms:
        for run in a.numbers["runs"]:
            rows.append(
                [
                    f"`{a.arm}`",
                    str(run["seed"]),
                    str(run["steps"]),
                    *[f"{run['after'].get(k, math.nan):.3f}" for k in keys],
                    f"{run['h0']:.3f}",
                    f"{run['entropy_ratio_last_quarter']:.2f}",
                    "–" if run["alpha_min"] is None else f"{run['alpha_min']:.3g}",
                    "–" if run["alpha_max"] is None else f"{run['alpha_max']:.3g}",
                    f"{run['wall_time_s']:.0f}",
                ]
            )
        for path in a.numbers["unfinished"]:
            rows.append([f"`{a.arm}`", Path(path).name, "unfinished", *["–"] * (len(header) - 3)])
    lines += [_table(header, rows), ""]
    return lines


def render(arms: list[ArmSummary], files: dict[str, str], window: int, manifest: dict[str, Any]) -> str:
    keys = sorted(
        {key for a in arms for key, s in a.numbers["after"].items() if s["mean"] is not None},
        key=lambda k: int(k.split("@")[1]),
    )
    lines: list[str] = []
    lines += _md_header(manifest, keys)
    lines += _md_summary_table(arms, keys)
    lines += _md_band(arms)
    lines += _md_per_level(arms, keys)
    lines += _md_per_set(arms, keys)
    lines += _md_training_by_level(arms, keys)
    lines += _md_during(arms, keys)
    lines += _md_plots(files, window)
    lines += _md_every_run(arms, keys)
    return "\n".join(lines)
