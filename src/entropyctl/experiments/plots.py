"""The report's PNG plots: entropy/H0, α, accuracy per level, pass@k after and during training."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from entropyctl.experiments.aggregate import (
    COLLAPSE_RATIO,
    EXPLOSION_RATIO,
    ArmSummary,
    _first_and_last,
    _pass_keys,
    _stack,
)
from entropyctl.trainer.run_dir import column_level, level_column, pass_key

__all__ = ["plot_all"]


@dataclass
class _Canvas:
    """What every figure function draws with and where it saves (``files``: figure key -> PNG name)."""

    plt: Any
    arms: list[ArmSummary]
    finished: list[Any]
    colors: Any
    out: Path
    window: int
    files: dict[str, str]

    def __iter__(self) -> Iterator[Any]:
        return iter((self.plt, self.arms, self.finished, self.colors, self.out, self.window, self.files))


def _save(canvas: _Canvas, fig: Any, key: str) -> None:
    fig.tight_layout()
    canvas.files[key] = f"{key}.png"
    fig.savefig(canvas.out / canvas.files[key])
    canvas.plt.close(fig)


def _arm_colors(plt: Any, n_arms: int) -> Any:
    """One distinct colour per arm: tab10 up to 10 arms, tab20 up to 20, then repeating."""
    cmap = plt.get_cmap("tab10" if n_arms <= 10 else "tab20")
    return lambda i: cmap(i % cmap.N)


def _band_plot(ax: Any, steps: np.ndarray, stacked: np.ndarray, label: str, color: Any) -> None:
    with np.errstate(invalid="ignore"), _quiet_nan_warnings():
        mean = np.nanmean(stacked, axis=0)
        low = np.nanmin(stacked, axis=0)
        high = np.nanmax(stacked, axis=0)
    ax.plot(steps, mean, label=label, color=color, linewidth=1.4)
    if stacked.shape[0] > 1:
        ax.fill_between(steps, low, high, color=color, alpha=0.18, linewidth=0)


class _quiet_nan_warnings:
    """numpy warns on all-NaN slices (e.g. α of clip_higher); those are expected here."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", category=RuntimeWarning)

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


def _legend(ax: Any, **kwargs: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def _plot_entropy(canvas: _Canvas) -> None:
    plt, arms, finished, colors, out, window, files = canvas
    # 1. entropy / H0 over steps.
    fig, ax = plt.subplots(figsize=(7, 4), dpi=80)
    for i, arm, runs in finished:
        stacked = _stack(runs, "entropy", lambda r, v: v / r.h0(), window)
        if stacked is not None:
            _band_plot(ax, stacked[0], stacked[1], arm.arm, colors(i))
        # The adaptive controllers' target H*/H0 (τ once anchored), thin and dashed in the arm's colour.
        target = _stack(runs, "target_entropy", lambda r, v: v / r.h0(), 1)
        if target is not None and np.isfinite(target[1]).any():
            with _quiet_nan_warnings():
                ax.plot(
                    target[0],
                    np.nanmean(target[1], axis=0),
                    color=colors(i),
                    linestyle="--",
                    linewidth=0.8,
                    alpha=0.8,
                )
    ax.axhline(COLLAPSE_RATIO, color="grey", linestyle=":", linewidth=1)
    ax.axhline(EXPLOSION_RATIO, color="grey", linestyle=":", linewidth=1)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("entropy / H0")
    ax.set_title(
        f"Entropy relative to initial (moving average {window}, band = seed min..max; dashed: target H*/H0)",
        fontsize=9,
    )
    _legend(ax, fontsize=7, ncol=2)
    _save(canvas, fig, "entropy")


def _plot_alpha(canvas: _Canvas) -> None:
    plt, arms, finished, colors, out, window, files = canvas
    # 2. α over steps (global coefficient; 0 for clip_higher).
    fig, ax = plt.subplots(figsize=(7, 4), dpi=80)
    for i, arm, runs in finished:
        stacked = _stack(runs, "alpha", None, 1)
        if stacked is not None and np.isfinite(stacked[1]).any():
            _band_plot(ax, stacked[0], stacked[1], arm.arm, colors(i))
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_xlabel("step")
    ax.set_ylabel("α (global coefficient)")
    ax.set_title("Entropy coefficient α over steps (band = seed min..max)", fontsize=9)
    _legend(ax, fontsize=7, ncol=2)
    _save(canvas, fig, "alpha")


def _plot_accuracy_by_level(canvas: _Canvas) -> None:
    plt, arms, finished, colors, out, window, files = canvas
    # 3. accuracy per difficulty level over steps (training rollouts).
    levels = sorted(
        {
            found
            for _, _, runs in finished
            for r in runs
            for c in r.metrics
            if (found := column_level(c, "acc")) is not None
        }
    )
    if levels:
        ncols = min(3, len(levels))
        nrows = math.ceil(len(levels) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.5 * nrows), dpi=80, squeeze=False)
        for k, level in enumerate(levels):
            ax = axes[k // ncols][k % ncols]
            for i, arm, runs in finished:
                stacked = _stack(runs, level_column("acc", level), None, window)
                if stacked is not None:
                    with _quiet_nan_warnings():
                        ax.plot(
                            stacked[0],
                            np.nanmean(stacked[1], axis=0),
                            color=colors(i),
                            label=arm.arm,
                            linewidth=1.2,
                        )
            ax.set_title(f"level {level}", fontsize=8)
            ax.set_ylim(-0.02, 1.02)
            ax.tick_params(labelsize=7)
        for k in range(len(levels), nrows * ncols):
            axes[k // ncols][k % ncols].axis("off")
        _legend(axes[0][0], fontsize=6)
        fig.suptitle(
            f"Training accuracy per difficulty level (moving average {window}, mean over seeds)", fontsize=9
        )
        _save(canvas, fig, "accuracy_by_level")


def _plot_pass_at_k(canvas: _Canvas) -> None:
    plt, arms, finished, colors, out, window, files = canvas
    # 4. pass@k curves on the held-out split after training (and the shared warm start before).
    fig, ax = plt.subplots(figsize=(6, 4), dpi=80)
    plotted_before = False
    # one dashed line when the arms share their warm start's evaluation; else each arm's, in its colour
    shared = len({repr(a.numbers.get("before")) for a in arms if a.numbers.get("before")}) <= 1
    for i, arm in enumerate(arms):
        ks = sorted(
            int(key.split("@")[1]) for key, s in arm.numbers["after"].items() if s["mean"] is not None
        )
        if not ks:
            continue
        means = [arm.numbers["after"][pass_key(k)]["mean"] for k in ks]
        stds = [arm.numbers["after"][f"pass@{k}"]["std"] for k in ks]
        ax.errorbar(
            ks,
            means,
            yerr=stds,
            label=arm.arm,
            color=colors(i),
            marker="o",
            markersize=3,
            capsize=2,
            linewidth=1.2,
        )
        if not (shared and plotted_before):
            before = [arm.numbers["before"].get(f"pass@{k}", {}).get("mean") for k in ks]
            if all(b is not None for b in before):
                color, label = (
                    ("black", "before RL (warm start)") if shared else (colors(i), f"{arm.arm}, before RL")
                )
                ax.plot(ks, before, color=color, linestyle="--", label=label, linewidth=1)
                plotted_before = True
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k (held-out)")
    ax.set_title("pass@k after training (error bars = std over seeds)", fontsize=9)
    _legend(ax, fontsize=7)
    _save(canvas, fig, "pass_at_k")


def _plot_during(canvas: _Canvas) -> None:
    plt, arms, finished, colors, out, window, files = canvas
    # 5. Held-out pass@1 and pass@k_max over steps, when the runs evaluated during training.
    if any(arm.numbers.get("during") for arm in arms):
        shown = _first_and_last(
            _pass_keys([step for arm in arms for step in arm.numbers.get("during", {}).values()])
        )
        fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 3.6), dpi=80, squeeze=False)
        for ax, key in zip(axes[0], shown, strict=True):
            for i, arm in enumerate(arms):
                during = arm.numbers.get("during", {})
                steps = sorted(int(step) for step in during)
                stats = [during[str(step)].get(key) or {} for step in steps]
                points = [(st, s) for st, s in zip(steps, stats, strict=True) if s.get("mean") is not None]
                if not points:
                    continue
                xs = np.array([st for st, _ in points], dtype=float)
                values = [np.array([v for v in s["values"] if math.isfinite(v)]) for _, s in points]
                ax.plot(
                    xs,
                    [s["mean"] for _, s in points],
                    marker="o",
                    markersize=3,
                    color=colors(i),
                    label=arm.arm,
                )
                ax.fill_between(
                    xs,
                    [v.min() for v in values],
                    [v.max() for v in values],
                    color=colors(i),
                    alpha=0.15,
                    linewidth=0,
                )
            ax.set_xlabel("step")
            ax.set_ylabel(f"{key} (held-out)")
            ax.set_title(f"held-out {key} during training", fontsize=9)
            _legend(ax, fontsize=7)
        _save(canvas, fig, "during")


def plot_all(arms: list[ArmSummary], out: Path, window: int) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = _arm_colors(plt, len(arms))
    files: dict[str, str] = {}
    finished = [(i, a, [r for r in a.runs if r.finished and r.metrics]) for i, a in enumerate(arms)]

    canvas = _Canvas(plt, arms, finished, colors, out, window, files)
    for plot in (_plot_entropy, _plot_alpha, _plot_accuracy_by_level, _plot_pass_at_k, _plot_during):
        plot(canvas)
    return files
