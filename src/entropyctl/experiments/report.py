"""`entropyctl report DIR`: compare the runs of an ablation side by side.

Reads every run directory under ``DIR`` (``DIR/<arm>/seed<N>/`` as written by ``entropyctl ablate``,
each holding the run-dir contract of ``entropyctl train``: ``config.yaml``, ``metrics.csv``,
``summary.json``) and writes

- ``report.md``: one row per arm with mean ± std over seeds of the final held-out pass@1 and pass@k,
  the same per difficulty level, ``H/H0`` over the last quarter of training, collapse / explosion
  flags and the range of the global coefficient α; plus every run's own numbers;
- ``report.json``: every number in ``report.md`` and the per-run values behind them;
- PNG plots: entropy/H0 over steps (smoothed, seed band), α over steps, accuracy per difficulty level
  over steps, pass@k curves.

Definitions (also written into ``report.md``):

- ``H0`` of a run: the controller's anchored initial entropy (``summary.json`` ``h0``) when it is
  finite, else the mean entropy of the run's first logged step. All arms start from the same
  checkpoint with the same seeds, so this is the same quantity for every arm.
- ``H/H0 (last ¼)``: mean over the last quarter of the logged steps of ``entropy / H0``.
- collapse: ``H/H0 (last ¼) < 0.1``; explosion: ``H/H0 (last ¼) > 1.2`` (thresholds of issue 5).
- mean ± std over seeds uses the sample standard deviation (``ddof=1``); with one seed std is 0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from entropyctl.controllers.band import HALF_WIDTH, WINDOW
from entropyctl.experiments.aggregate import (
    COLLAPSE_RATIO,
    EXPLOSION_RATIO,
    ArmSummary,
    ReportError,
    RunRecord,
    find_runs,
    load_run,
    read_manifest,
    summarize_arm,
)
from entropyctl.experiments.markdown import render
from entropyctl.experiments.plots import plot_all

__all__ = [
    "COLLAPSE_RATIO",
    "EXPLOSION_RATIO",
    "ArmSummary",
    "ReportError",
    "RunRecord",
    "find_runs",
    "load_run",
    "summarize_arm",
    "write_report",
]


def _default_window(arms: list[ArmSummary]) -> int:
    lengths = [len(r.steps) for a in arms for r in a.runs if r.metrics]
    if not lengths:
        return 1
    # Per-step reward and entropy are noisy (±0.1 at 32 prompts); ~1/15 of the run, at most 25 steps.
    return int(max(1, min(25, max(lengths) // 15)))


def write_report(
    root: str | Path, out: str | Path | None = None, *, window: int | None = None
) -> dict[str, Any]:
    """Write ``report.md``, ``report.json`` and the PNG plots for the ablation under ``root``.

    Returns the JSON document. ``out`` defaults to ``root``; ``window`` is the moving-average length
    of the over-steps plots (default: about 1/15 of the run, at most 25 steps).
    """
    root = Path(root)
    out = Path(out) if out is not None else root
    if window is not None and window < 1:
        raise ReportError(f"window: must be ≥ 1 steps (got {window})")
    grouped = find_runs(root)  # before anything is written: a mistyped root creates no folder
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # e.g. --out names a file
        raise ReportError(f"{out}: cannot write the report there ({err.strerror or err})") from None
    arms = [summarize_arm(name, runs) for name, runs in grouped.items()]
    window = window if window is not None else _default_window(arms)
    files = plot_all(arms, out, window)

    manifest: dict[str, Any] = {}
    if (root / "ablation.json").exists():
        manifest = read_manifest(root / "ablation.json")
    doc: dict[str, Any] = {
        "root": str(root),
        "definitions": {
            "h0": "summary.json h0 when finite, else the first logged step's mean entropy",
            "entropy_ratio_last_quarter": "mean over the last quarter of logged steps of entropy / H0",
            "collapse": f"entropy_ratio_last_quarter < {COLLAPSE_RATIO}",
            "explosion": f"entropy_ratio_last_quarter > {EXPLOSION_RATIO}",
            "std": "sample standard deviation over seeds (ddof=1); 0 with one seed",
            "band": f"runs with an entropy target: controllers.band.band_health (the {WINDOW}-step average "
            f"within ±{HALF_WIDTH:.0%} of H*; step numbers are metrics.csv's; shares from the first step in "
            "band on)",
            "smoothing_window": window,
        },
        "ablation": manifest,
        "plots": files,
        "arms": {a.arm: a.numbers for a in arms},
    }
    (out / "report.json").write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    (out / "report.md").write_text(render(arms, files, window, manifest))
    return doc


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
