"""benchmarks/robustness_reading.py on hand-made run directories: the collapse / explosion calls, the
knob range around the default, AER's band share and α-at-bound share, unfinished runs left out."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from committed_runs import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["step", "entropy", "target_entropy", "alpha"]


@pytest.fixture(scope="module")
def reading() -> Any:
    return load_benchmark("robustness_reading")


def _run(
    path: Path,
    controller: dict[str, Any],
    entropy: list[float],
    *,
    alpha: list[float] | None = None,
    target: float = float("nan"),
    pass1: float = 0.5,
    status: str = "finished",
    h0: float | None = 1.0,
) -> None:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"controller": controller}))
    alphas = alpha or [float(controller.get("alpha", 0.0))] * len(entropy)
    with (path / "metrics.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for i, (h, a) in enumerate(zip(entropy, alphas, strict=True)):
            writer.writerow([i + 1, h, target, a])
    summary = {
        "status": status,
        "h0": h0,
        "after": {"pass@1": pass1, "pass@8": pass1 + 0.1},
        "before": {"pass@1": 0.2, "pass@8": 0.6},
    }
    (path / "summary.json").write_text(json.dumps(summary))


def _aer(step: float = 0.05, tau: float = 0.4) -> dict[str, Any]:
    update = {"rule": "relative", "step": step, "alpha_min": 1e-5, "alpha_max": 1.0}
    return {"name": "aer", "update": update, "anchor": {"mode": "initial", "tau": tau}}


def _manifest(task: Path, arms: list[tuple[str, str]], seeds: list[int]) -> None:
    task.mkdir(parents=True, exist_ok=True)
    items = [{"label": label, "slug": slug} for label, slug in arms]
    (task / "ablation.json").write_text(json.dumps({"arms": items, "seeds": seeds}))


def test_ranges_calls_and_aer_shares(tmp_path: Path, reading: Any) -> None:
    task = tmp_path / "task"
    n = 100
    flat = [1.0] * n
    collapse = [1.0] * 75 + [0.05] * 25  # last quarter 0.05 < 0.1
    explode = [1.0] * 75 + [1.5] * 25  # last quarter 1.5 > 1.2
    arms = [
        ("fixed:alpha=0", "f0"),
        ("fixed:alpha=0.01", "f1"),
        ("fixed:alpha=0.1", "f2"),
        ("aer:update.step=0.015", "a1"),
        ("aer", "a2"),
        ("aer:update.step=0.15", "a3"),
        ("aer:anchor.tau=0.3", "t1"),
    ]
    _manifest(task, arms, [0, 1])
    for seed in (0, 1):
        _run(task / "f0" / f"seed{seed}", {"name": "fixed", "alpha": 0.0}, collapse if seed else flat)
        _run(task / "f1" / f"seed{seed}", {"name": "fixed", "alpha": 0.01}, flat)
        _run(task / "f2" / f"seed{seed}", {"name": "fixed", "alpha": 0.1}, explode)
        # aer: 0.4 on target (in band from step 1); α at its floor on the first 10 steps
        alpha = [1e-5] * 10 + [0.01] * (n - 10)
        _run(task / "a2" / f"seed{seed}", _aer(), [0.4] * n, alpha=alpha, target=0.4)
        _run(task / "a3" / f"seed{seed}", _aer(step=0.15), [0.4] * n, alpha=[0.01] * n, target=0.4)
        _run(task / "t1" / f"seed{seed}", _aer(tau=0.3), [0.3] * n, alpha=[0.01] * n, target=0.3)
    # the smallest step: one seed never reaches the band and collapses; the other is unfinished
    _run(task / "a1" / "seed0", _aer(step=0.015), collapse, alpha=[0.01] * n, target=0.4)
    _run(task / "a1" / "seed1", _aer(step=0.015), flat, alpha=[0.01] * n, target=0.4, status="stopped")

    result = reading.read_task(task)
    arms_read = result["arms"]
    assert arms_read["fixed:alpha=0"]["collapsed"] == 1 and arms_read["fixed:alpha=0.1"]["exploded"] == 2
    assert arms_read["aer:update.step=0.015"]["seeds_finished"] == 1  # the stopped run is left out
    a2 = arms_read["aer"]
    assert a2["in_band_share"][0] == pytest.approx(1.0)
    assert a2["alpha_at_bound"][0] == pytest.approx(0.10)
    never = arms_read["aer:update.step=0.015"]["runs"][0]  # 50-step average 1.0 -> 0.525: never in band
    assert never["first_in_band"] is None and never["in_band_share"] == 0.0
    # a fixed arm is read against the 0.4·H0 AER's defaults would set: flat at 1.0 = 2.5·(0.4·H0) never is
    assert arms_read["fixed:alpha=0.01"]["in_band_share"][0] == 0.0

    fixed = reading.ok_range(result, "fixed α")
    assert fixed["values"] == [0.0, 0.01, 0.1] and fixed["ok"] == [0.01] and fixed["span"] == 1.0
    step = reading.ok_range(result, "aer step κ")
    # the incomplete arm (1 of 2 seeds) is not a knob value yet; 0.05 and 0.15 are ok: a 3x span
    assert (
        step["values"] == [0.05, 0.15] and step["ok"] == [0.05, 0.15] and step["span"] == pytest.approx(3.0)
    )
    tau = reading.ok_range(result, "aer τ")
    assert tau["values"] == [0.3, 0.4] and tau["ok"] == [0.3, 0.4]

    text = reading.render({"task": result})
    assert "| fixed α | 0.01 of 0, 0.01, 0.1 |" in text
    assert "| aer step κ | 0.05, 0.15 (3×) of 0.05, 0.15 |" in text


def test_the_range_around_the_default_stops_at_a_failing_value(tmp_path: Path, reading: Any) -> None:
    task = tmp_path / "task"
    arms = [(f"aer:update.step={s}", f"s{i}") for i, s in enumerate((0.01, 0.05, 0.2, 1.0))]
    _manifest(task, arms, [0])
    good, bad = [0.4] * 40, [0.4] * 30 + [0.01] * 10
    for i, s in enumerate((0.01, 0.05, 0.2, 1.0)):
        # 0.01 collapses; the default 0.05, 0.2 and 1.0 hold: the range is 0.05 ... 1.0
        _run(
            task / f"s{i}" / "seed0", _aer(step=s), bad if s == 0.01 else good, alpha=[0.01] * 40, target=0.4
        )
    result = reading.read_task(task)
    r = reading.ok_range(result, "aer step κ")
    assert r["ok"] == [0.05, 0.2, 1.0] and r["span"] == pytest.approx(20.0)
    # a failing default gives an empty range even when other values hold
    (task / "s1" / "seed0" / "metrics.csv").unlink()
    _run(task / "s1b" / "seed0", _aer(step=0.05), bad, alpha=[0.01] * 40, target=0.4)
    (task / "ablation.json").write_text(
        json.dumps({"arms": [{"label": "d", "slug": "s1b"}, {"label": "x", "slug": "s2"}], "seeds": [0]})
    )
    assert reading.ok_range(reading.read_task(task), "aer step κ")["ok"] == []


def test_a_fixed_run_is_read_in_band_against_the_defaults_target(tmp_path: Path, reading: Any) -> None:
    task = tmp_path / "task"
    _manifest(task, [("fixed:alpha=0", "f0")], [0])
    # H0 = 1.0; the 50-step average of [1.0, 0.4, 0.4, ...] is within ±20 % of 0.4 from its 8th step on
    _run(task / "f0" / "seed0", {"name": "fixed", "alpha": 0.0}, [1.0] + [0.4] * 99)
    arm = reading.read_task(task)["arms"]["fixed:alpha=0"]
    assert arm["in_band_share"][0] == pytest.approx(1.0)
    assert arm["runs"][0]["band_tau"] == reading.BAND_TAU == 0.4
    assert "alpha_at_bound" not in arm  # α's bounds are AER's


def test_fixed_runs_without_h0_use_the_first_logged_entropy(tmp_path: Path, reading: Any) -> None:
    run = tmp_path / "run"
    _run(run, {"name": "fixed", "alpha": 0.0}, [2.0] * 30 + [0.1] * 10, h0=None)
    read = reading.read_run(run)
    assert read is not None and read["h0"] == 2.0 and read["collapse"]


def test_seeds_restrict_the_reading(tmp_path: Path, reading: Any) -> None:
    task = tmp_path / "task"
    _manifest(task, [("fixed:alpha=0", "f0")], [0, 1, 2])
    _run(task / "f0" / "seed0", {"name": "fixed", "alpha": 0.0}, [1.0] * 40)
    _run(task / "f0" / "seed1", {"name": "fixed", "alpha": 0.0}, [1.0] * 30 + [0.01] * 10)
    full = reading.read_task(task)["arms"]["fixed:alpha=0"]
    assert (full["seeds_finished"], full["seeds_planned"]) == (2, 3)
    assert reading.ok_range(reading.read_task(task), "fixed α")["values"] == []  # incomplete: no value
    first = reading.read_task(task, [0])
    assert first["arms"]["fixed:alpha=0"]["seeds_planned"] == 1
    assert reading.ok_range(first, "fixed α")["ok"] == [0.0]
    assert reading.ok_range(reading.read_task(task, [0, 1]), "fixed α")["ok"] == []


def test_an_arm_off_the_defaults_in_another_knob_is_not_a_sweep_value(tmp_path: Path, reading: Any) -> None:
    task = tmp_path / "task"
    _manifest(task, [("aer", "a"), ("aer:update.alpha_min=5e-4", "b")], [0])
    _run(task / "a" / "seed0", _aer(), [0.4] * 40, alpha=[0.01] * 40, target=0.4)
    floor = _aer()
    floor["update"]["alpha_min"] = 5e-4
    _run(task / "b" / "seed0", floor, [0.4] * 40, alpha=[0.01] * 40, target=0.4)
    result = reading.read_task(task)
    assert reading.ok_range(result, "aer step κ")["values"] == [0.05]  # not [0.05, 0.05]
    assert reading.ok_range(result, "aer α_min")["values"] == [1e-5, 5e-4]


def test_a_candidate_that_moves_a_held_setting_is_in_no_sweep(tmp_path: Path, reading: Any) -> None:
    """An aer arm that also changes a setting no sweep moves (κ_p, the H0 readings) is reported, but its
    step κ is not a value of the step sweep."""
    task = tmp_path / "task"
    _manifest(task, [("aer", "a"), ("aer:update.step=0.15,update.proportional=3", "b")], [0])
    _run(task / "a" / "seed0", _aer(), [0.4] * 40, alpha=[0.01] * 40, target=0.4)
    candidate = _aer()
    candidate["update"].update(step=0.15, proportional=3.0)
    _run(task / "b" / "seed0", candidate, [0.4] * 40, alpha=[0.01] * 40, target=0.4)
    result = reading.read_task(task)
    assert set(result["arms"]) == {"aer", "aer:update.step=0.15,update.proportional=3"}
    assert reading.ok_range(result, "aer step κ")["values"] == [0.05]


def test_alpha_at_the_floor_above_target_is_told_apart(tmp_path: Path, reading: Any) -> None:
    """α at its floor while the entropy is above H* (no bonus wanted) is counted apart from α at a bound
    against the error (at the floor below H*, or at the cap)."""
    run = tmp_path / "aer" / "seed0"
    entropy = [0.6] * 40 + [0.3] * 60  # H* = 0.4: above for 40 steps, below for 60
    alpha = [1e-5] * 40 + [1e-5] * 10 + [0.1] * 40 + [1.0] * 10
    _run(run, _aer(), entropy, alpha=alpha, target=0.4)
    numbers = reading.read_run(run)
    assert numbers["alpha_at_bound"] == pytest.approx(0.6)
    assert numbers["alpha_floor_above_target"] == pytest.approx(0.4)
    assert numbers["alpha_bound_otherwise"] == pytest.approx(0.2)


def _arm(befores: dict[int, float]) -> dict[str, Any]:
    runs = [{"run": f"arm/seed{seed}", "before_pass@1": value} for seed, value in befores.items()]
    values = list(befores.values())
    mean = sum(values) / len(values)
    return {"runs": runs, "seeds_finished": len(runs), "before_pass@1": (mean, 0.0)}


def test_warm_starts_are_told_apart_seed_by_seed_across_arms_of_other_seeds(reading: Any) -> None:
    # six seeds and three of them: one warm start (the same score on every seed both ran) even though
    # their means differ; an arm that differs on one shared seed started from another
    six = _arm({0: 0.10, 1: 0.12, 2: 0.14, 3: 0.20, 4: 0.22, 5: 0.24})
    three = _arm({0: 0.10, 1: 0.12, 2: 0.14})
    other = _arm({0: 0.10, 1: 0.13, 2: 0.14})
    line = reading._before_line({"six": six, "three": three})
    assert line == "Before RL (warm start, same held-out set): pass@1 0.170 ± 0.000."
    line = reading._before_line({"six": six, "three": three, "other": other})
    assert line.endswith("not comparable with the others': `other` 0.123 ± 0.000.")


@pytest.mark.parametrize(
    "change",
    [
        {"update": {"climb_boost": 10.0, "climb_from": 0.2}},
        {"update": {"rearm_at_target": True}},
        {"allocation": {"rule": "uniform"}},
    ],
)
def test_the_collapse_studys_candidates_are_in_no_sweep(
    tmp_path: Path, reading: Any, change: dict[str, Any]
) -> None:
    """The collapse study's candidate arms keep the step and τ at their defaults but move a setting no
    sweep moves: they are read, not counted as a second value 0.05 of the step sweep."""
    task = tmp_path / "task"
    _manifest(task, [("aer", "a"), ("aer:candidate", "b")], [0])
    _run(task / "a" / "seed0", _aer(), [0.4] * 40, alpha=[0.01] * 40, target=0.4)
    candidate = _aer()
    for part, values in change.items():
        candidate.setdefault(part, {}).update(values)
    _run(task / "b" / "seed0", candidate, [0.4] * 40, alpha=[0.01] * 40, target=0.4)
    result = reading.read_task(task)
    assert set(result["arms"]) == {"aer", "aer:candidate"}
    assert not result["arms"]["aer:candidate"]["in_sweep"]
    assert reading.ok_range(result, "aer step κ")["values"] == [0.05]


def test_one_task_read_from_several_study_folders(tmp_path: Path, reading: Any, capsys: Any) -> None:
    """Arms of one task that ran into several folders read as one task: every folder's arms, an arm in
    two folders with each seed's run from the first folder that has it, the name given on the command line."""
    first, second = tmp_path / "study", tmp_path / "study_more"
    _manifest(first, [("aer", "a"), ("fixed:alpha=0", "f0")], [0, 1])
    _manifest(second, [("aer", "a"), ("fixed:alpha=0.06", "f6")], [1, 2])
    for seed in (0, 1):
        _run(first / "a" / f"seed{seed}", _aer(), [0.4] * 40, alpha=[0.01] * 40, target=0.4, pass1=0.5)
        _run(first / "f0" / f"seed{seed}", {"name": "fixed", "alpha": 0.0}, [1.0] * 30 + [0.01] * 10)
    for seed in (1, 2):  # seed 1 of `aer` is also in the first folder: that one is read
        _run(second / "a" / f"seed{seed}", _aer(), [0.4] * 40, alpha=[0.01] * 40, target=0.4, pass1=0.9)
        _run(second / "f6" / f"seed{seed}", {"name": "fixed", "alpha": 0.06}, [1.0] * 40)
    result = reading.read_task([first, second], name="collapse")
    assert result["task"] == "collapse"
    assert set(result["arms"]) == {"aer", "fixed:alpha=0", "fixed:alpha=0.06"}
    aer = result["arms"]["aer"]
    assert (aer["seeds_finished"], aer["seeds_planned"]) == (3, 3)
    assert [run["pass@1"] for run in aer["runs"]] == [0.5, 0.5, 0.9]
    assert reading.ok_range(result, "fixed α") == {"values": [0.0, 0.06], "ok": [0.06], "span": 1.0}
    # one folder alone is the task it was
    assert set(reading.read_task(first)["arms"]) == {"aer", "fixed:alpha=0"}
    # the command line: NAME=DIR,DIR (a folder's own "=" comes after a "/")
    assert reading.main([f"collapse={first},{second}"]) == 0
    out = capsys.readouterr().out
    assert "| fixed α | 0.06 of 0, 0.06 |" in out
    assert "## collapse" in out
    assert reading.main([str(first)]) == 0
    assert f"## {first.name}" in capsys.readouterr().out
