"""benchmarks/horizon_reading.py: the paired differences at each evaluation are the mean of the per-seed
differences ± their standard error, over the seeds both arms finished, and the in-band share is taken
over the steps since the previous evaluation."""

from __future__ import annotations

import csv
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "horizon_reading.py"
STEPS = 120
H0 = 1.0


def write_run(run: Path, pass1: dict[str, float], entropy: list[float], status: str = "finished") -> None:
    run.mkdir(parents=True)
    with (run / "metrics.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "entropy", "h0"])
        for step, value in enumerate(entropy, start=1):
            writer.writerow([step, value, H0])
    evals = {name: {"pass@1": p, "pass@8": min(1.0, 2 * p)} for name, p in pass1.items()}
    (run / "summary.json").write_text(json.dumps({"status": status, "evals": evals}))


def test_pairs_by_seed_and_reads_the_band_between_evaluations(tmp_path: Path) -> None:
    study = tmp_path / "study"
    in_band = [0.4 * H0] * STEPS  # on H* = 0.4·H0 throughout
    # the candidate: far above the band until step 60, on it after
    late = [2.0 * H0] * 60 + [0.4 * H0] * 60
    base = {0: (0.20, 0.50), 1: (0.30, 0.60), 2: (0.25, 0.40)}
    cand = {0: (0.10, 0.55), 1: (0.35, 0.70), 2: (0.15, 0.45)}
    for seed, (p60, p_end) in base.items():
        write_run(study / "aer" / f"seed{seed}", {"before": 0.1, "step_60": p60, "after": p_end}, in_band)
    for seed, (p60, p_end) in cand.items():
        write_run(study / "cand" / f"seed{seed}", {"before": 0.1, "step_60": p60, "after": p_end}, late)
    # a seed only the candidate finished, and one the base has not finished: both left out
    write_run(study / "cand" / "seed3", {"step_60": 0.9, "after": 0.9}, late)
    write_run(study / "aer" / "seed4", {"step_60": 0.0, "after": 0.0}, in_band, status="running")
    write_run(study / "cand" / "seed4", {"step_60": 0.9, "after": 0.9}, late)
    out = tmp_path / "horizon.md"
    subprocess.run(
        [sys.executable, str(SCRIPT), str(study), "--arm", "cand", "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    reading = json.loads(out.with_suffix(".json").read_text())["studies"]["study"]
    assert reading["seeds"] == [0, 1, 2]
    assert [row["step"] for row in reading["rows"]] == [60, STEPS]
    for row, index in zip(reading["rows"], (0, 1), strict=True):
        differences = [cand[s][index] - base[s][index] for s in (0, 1, 2)]
        assert row["pass@1"]["delta"] == pytest.approx(statistics.fmean(differences), abs=1e-12)
        assert row["pass@1"]["se"] == pytest.approx(statistics.stdev(differences) / math.sqrt(3), abs=1e-12)
        assert row["pass@1"]["aer"] == pytest.approx(statistics.fmean(base[s][index] for s in (0, 1, 2)))
    first, second = (row["in_band"] for row in reading["rows"])
    assert first["aer"] == second["aer"] == 1.0
    # the candidate's 50-step average is above the band over all of steps 1-60 and enters it within
    # steps 61-120 once the window holds mostly on-target readings
    assert first["cand"] == 0.0 and 0.0 < second["cand"] < 1.0
    assert "| study | 0,1,2 | 60 |" in out.read_text()


def test_no_common_seed_is_an_error(tmp_path: Path) -> None:
    study = tmp_path / "study"
    write_run(study / "aer" / "seed0", {"after": 0.1}, [0.4] * 10)
    write_run(study / "cand" / "seed1", {"after": 0.1}, [0.4] * 10)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(study), "--arm", "cand", "--out", str(tmp_path / "h.md")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "no seed finished in both" in result.stderr


def test_pools_the_seeds_of_several_folders(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    on_target = [0.4 * H0] * 10
    for folder, seeds in ((first, (0, 1)), (second, (2,))):
        for seed in seeds:
            write_run(folder / "aer" / f"seed{seed}", {"after": 0.1 * seed}, on_target)
            write_run(folder / "cand" / f"seed{seed}", {"after": 0.1 * seed + 0.05 * (seed + 1)}, on_target)
    out = tmp_path / "h.md"
    command = [sys.executable, str(SCRIPT), f"{first},{second}", "--arm", "cand", "--label", "pooled"]
    subprocess.run([*command, "--out", str(out)], check=True, capture_output=True, timeout=120)
    reading = json.loads(out.with_suffix(".json").read_text())["studies"]["pooled"]
    assert reading["seeds"] == [0, 1, 2]
    assert reading["rows"][0]["pass@1"]["delta"] == pytest.approx(0.1, abs=1e-12)  # 0.05, 0.10, 0.15
    # the same seed in two folders is not pooled twice
    write_run(second / "aer" / "seed1", {"after": 0.1}, on_target)
    result = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "in two folders" in result.stderr


def test_last_evaluations_are_averaged_per_seed_before_pairing(tmp_path: Path) -> None:
    study = tmp_path / "study"
    on_target = [0.4 * H0] * STEPS
    # three evaluations; the last two averaged per seed: base 0.3 and 0.3, the candidate 0.4 and 0.6
    base = {
        0: {"step_40": 0.0, "step_80": 0.2, "after": 0.4},
        1: {"step_40": 0.9, "step_80": 0.3, "after": 0.3},
    }
    cand = {
        0: {"step_40": 0.5, "step_80": 0.3, "after": 0.5},
        1: {"step_40": 0.0, "step_80": 0.6, "after": 0.6},
    }
    for seed in (0, 1):
        write_run(study / "aer" / f"seed{seed}", base[seed], on_target)
        write_run(study / "cand" / f"seed{seed}", cand[seed], on_target)
    out = tmp_path / "h.md"
    command = [sys.executable, str(SCRIPT), str(study), "--arm", "cand", "--out", str(out)]
    subprocess.run([*command, "--last", "2"], check=True, capture_output=True, timeout=120)
    last = json.loads(out.with_suffix(".json").read_text())["studies"]["study"]["last"]
    assert last["steps"] == [80, STEPS]
    assert last["pass@1"]["delta"] == pytest.approx(0.2, abs=1e-12)  # +0.1 and +0.3
    assert last["pass@1"]["se"] == pytest.approx(statistics.stdev([0.1, 0.3]) / math.sqrt(2), abs=1e-12)
    assert last["pass@1"]["aer"] == pytest.approx(0.3, abs=1e-12)
    assert "| study | 0,1 | last 2 (mean) |" in out.read_text()
    # as many evaluations as asked for leaves none before them to read the band from: an error
    result = subprocess.run([*command, "--last", "3"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "3 evaluations" in result.stderr
