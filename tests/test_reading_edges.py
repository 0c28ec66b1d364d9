"""The benchmark readers on the edges a review found (each fails on the previous code): a NaN entropy
(a step without tokens) in the last quarter read an exploded run as neither collapsed nor exploded, and
a run whose H* is NaN until it anchors (anchor.steps > 1) was read against 0.4 × its first reading."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import numpy as np
from committed_runs import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
EXPLODED = ROOT / "benchmarks/robustness/level2/fixed_alpha=0.1/seed0"
LATE_ANCHOR = ROOT / "benchmarks/robustness/level2_seeds/aer_alpha_0=0.01_anchor.steps=150/seed1"


def _with_a_nan_entropy(tmp_path: Path) -> Path:
    run = tmp_path / EXPLODED.parent.name / EXPLODED.name
    shutil.copytree(EXPLODED, run)
    with (run / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    rows[-10]["entropy"] = "nan"
    with (run / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return run


def test_a_nan_entropy_leaves_an_explosion_an_explosion(tmp_path: Path) -> None:
    robustness, collapse = load_benchmark("robustness_reading"), load_benchmark("collapse_reading")
    committed = robustness.read_run(EXPLODED)
    assert committed["explosion"]
    run = _with_a_nan_entropy(tmp_path)
    read = robustness.read_run(run)
    assert read["explosion"] and math.isclose(
        read["ratio_last_quarter"], committed["ratio_last_quarter"], rel_tol=1e-2
    )
    assert collapse.read_run(run, 0.4)["last_quarter_over_h0"] > 1.2


def test_a_late_anchor_is_read_against_its_own_logged_target() -> None:
    settling = load_benchmark("settling")
    with (LATE_ANCHOR / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    entropy = np.array([float(r["entropy"]) for r in rows])
    logged = np.array([float(r["target_entropy"]) for r in rows])
    assert np.isnan(logged[0]) and np.isfinite(logged[-1])  # NaN until it anchors
    target = settling.logged_target(rows, entropy)
    assert np.isnan(target[0]) and target[-1] == logged[-1]
