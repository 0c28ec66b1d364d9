"""`entropyctl report` on synthetic run directories written to the run-dir contract."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from entropyctl.experiments.report import find_runs, load_run, write_report
from entropyctl.trainer.run_dir import Summary, level_column, metric_columns, pass_key

LEVELS = (1, 2, 3)


def write_fake_run(
    run_dir: Path,
    *,
    controller: str,
    seed: int,
    entropy_curve: np.ndarray,
    alpha: np.ndarray | None,
    pass1: float,
    pass8: float,
    h0: float | None,
    finished: bool = True,
    evals: dict[str, dict[str, float]] | None = None,
    target: float | None = None,
) -> None:
    """A run directory as `entropyctl train` writes it (config.yaml, metrics.csv, summary.json)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "controller": {"name": controller}}))
    columns = metric_columns(LEVELS)  # the trainer's own columns
    with (run_dir / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for i, entropy in enumerate(entropy_curve):
            row = {c: 0.1 for c in columns}
            row.update(
                step=i + 1,
                reward=0.5,
                entropy=float(entropy),
                h0="" if h0 is None else h0,
                alpha="" if alpha is None else float(alpha[i]),
                target_entropy="" if target is None else target,
            )
            for k in LEVELS:
                row[level_column("acc", k)] = 1.0 - 0.2 * k
                row[level_column("entropy", k)] = float(entropy) * k
            writer.writerow(row)
    evaluation = {
        pass_key(1): pass1,
        pass_key(4): (pass1 + pass8) / 2,
        pass_key(8): pass8,
        "by_level": {str(k): {"pass@1": pass1 / k, "pass@4": pass1, "pass@8": pass8} for k in LEVELS},
        "n_samples": 8,
    }
    summary = {
        "status": "finished" if finished else "running",
        "steps": len(entropy_curve),
        "wall_time_s": 12.0,
        "final_entropy": float(entropy_curve[-1]),
        "h0": h0,
        "alpha": None if alpha is None else float(alpha[-1]),
        "before": {**evaluation, "pass@1": 0.3, "pass@4": 0.5, "pass@8": 0.6},
        "after": evaluation,
    }
    if evals is not None:
        summary["evals"] = evals
    Summary.model_validate(summary)  # what the trainer writes
    (run_dir / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def ablation_dir(tmp_path: Path) -> Path:
    """Three arms × 2 seeds: one collapsing (no α), one exploding (big α), one held near 0.4·H0."""
    steps = 40
    t = np.arange(steps)
    root = tmp_path / "abl"
    arms = []
    for slug, label, make in [
        (
            "fixed_alpha=0",
            "fixed:alpha=0",
            lambda s: (0.6 * np.exp(-t / 6) + 0.01 * s, np.zeros(steps), None),
        ),
        (
            "fixed_alpha=0.1",
            "fixed:alpha=0.1",
            lambda s: (0.6 * (1 + t / 20) + 0.01 * s, np.full(steps, 0.1), None),
        ),
        (
            "aer",
            "aer",
            lambda s: (0.6 * (0.4 + 0.6 * np.exp(-t / 5)) + 0.01 * s, np.linspace(0.0, 0.02, steps), 0.6),
        ),
    ]:
        arms.append({"label": label, "slug": slug})
        for seed in (0, 1):
            entropy, alpha, h0 = make(seed)
            write_fake_run(
                root / slug / f"seed{seed}",
                controller=label.split(":")[0],
                seed=seed,
                entropy_curve=entropy,
                alpha=alpha,
                pass1=0.4 + 0.1 * seed,
                pass8=0.8,
                h0=h0,
            )
    (root / "ablation.json").write_text(json.dumps({"arms": arms, "seeds": [0, 1], "base_config": "x.yaml"}))
    return root


def test_report_tables_flags_and_plots(ablation_dir: Path) -> None:
    doc = write_report(ablation_dir)
    for name in (
        "report.md",
        "report.json",
        "entropy.png",
        "alpha.png",
        "accuracy_by_level.png",
        "pass_at_k.png",
    ):
        path = ablation_dir / name
        assert path.exists() and path.stat().st_size > 500, name
    arms = doc["arms"]
    assert list(arms) == ["fixed:alpha=0", "fixed:alpha=0.1", "aer"]
    # pass@1 mean ± sample std over seeds 0.4 and 0.5.
    p1 = arms["aer"]["after"]["pass@1"]
    assert p1["mean"] == pytest.approx(0.45)
    assert p1["std"] == pytest.approx(np.std([0.4, 0.5], ddof=1))
    assert arms["aer"]["after_by_level"]["2"]["pass@1"]["mean"] == pytest.approx(0.225)
    # Flags: exp(-t/6) ends far below 0.1·H0; growing entropy ends above 1.2·H0; AER in between.
    assert arms["fixed:alpha=0"]["collapsed_runs"] == 2 and arms["fixed:alpha=0"]["exploded_runs"] == 0
    assert arms["fixed:alpha=0.1"]["exploded_runs"] == 2 and arms["fixed:alpha=0.1"]["collapsed_runs"] == 0
    aer_ratio = arms["aer"]["entropy_ratio_last_quarter"]["mean"]
    assert 0.35 < aer_ratio < 0.5 and arms["aer"]["collapsed_runs"] == arms["aer"]["exploded_runs"] == 0
    assert arms["aer"]["alpha_range"] == pytest.approx([0.0, 0.02])
    # H0 falls back to the first step's entropy when the controller has no anchor (fixed).
    assert arms["fixed:alpha=0"]["runs"][1]["h0"] == pytest.approx(0.61)

    # Per-level training entropy: first 10 steps → last quarter, mean over seeds 0 and 1 (+0.01·seed).
    t = np.arange(40)
    level2 = arms["fixed:alpha=0"]["training_by_level"]["2"]
    curve = 2 * (0.6 * np.exp(-t / 6) + 0.005)
    assert level2["entropy_start"]["mean"] == pytest.approx(curve[:10].mean())
    assert level2["entropy_last_quarter"]["mean"] == pytest.approx(curve[30:].mean())
    assert level2["accuracy_last_quarter"]["mean"] == pytest.approx(0.6)

    md = (ablation_dir / "report.md").read_text()
    assert "## Training entropy and accuracy per difficulty level" in md and "level 3 entropy" in md
    for column in ("pass@1", "pass@4", "pass@8", "H/H0 (last ¼)", "collapse", "explosion", "α range"):
        assert column in md
    assert "level 3" in md and "0.450 ± 0.071" in md
    for png in ("entropy.png", "alpha.png", "accuracy_by_level.png", "pass_at_k.png"):
        assert f"]({png})" in md
    assert json.loads((ablation_dir / "report.json").read_text())["arms"]["aer"]["h0"][
        "mean"
    ] == pytest.approx(0.6)


def test_unfinished_runs_are_listed_not_averaged(ablation_dir: Path) -> None:
    write_fake_run(
        ablation_dir / "aer" / "seed2",
        controller="aer", seed=2, entropy_curve=np.full(10, 9.0), alpha=np.zeros(10),
        pass1=1.0, pass8=1.0, h0=0.6, finished=False,
    )  # fmt: skip
    doc = write_report(ablation_dir)
    aer = doc["arms"]["aer"]
    assert aer["n_runs"] == 3 and aer["n_finished"] == 2
    assert aer["after"]["pass@1"]["mean"] == pytest.approx(0.45)
    assert "unfinished" in (ablation_dir / "report.md").read_text()


def test_without_manifest_arms_come_from_directories(tmp_path: Path) -> None:
    for arm in ("a", "b"):
        write_fake_run(
            tmp_path / arm / "seed0", controller="fixed", seed=0, entropy_curve=np.linspace(1, 0.5, 8),
            alpha=None, pass1=0.5, pass8=0.9, h0=None,
        )  # fmt: skip
    grouped = find_runs(tmp_path)
    assert sorted(grouped) == ["a", "b"]
    assert grouped["a"][0].seed == 0 and math.isnan(grouped["a"][0].metrics["alpha"][0])
    doc = write_report(tmp_path, tmp_path / "out")
    assert doc["arms"]["a"]["alpha_range"] is None
    assert (tmp_path / "out" / "report.md").exists()


def test_a_folder_of_train_runs_is_one_arm_per_run(tmp_path: Path) -> None:
    """`entropyctl report runs/` over runs of `entropyctl train` (named by time and controller, not
    seed<N>) tables each run as its own arm, not every controller pooled into one arm `runs`; seed<N>
    folders still pool under their parent."""
    for name, controller in (("20261203-071500-aer", "aer"), ("20261203-081500-fixed", "fixed")):
        write_fake_run(
            tmp_path / "runs" / name, controller=controller, seed=0, entropy_curve=np.linspace(1, 0.5, 8),
            alpha=None, pass1=0.5, pass8=0.9, h0=None,
        )  # fmt: skip
    for seed in (0, 1):
        write_fake_run(
            tmp_path / "runs" / "study" / "aer" / f"seed{seed}", controller="aer", seed=seed,
            entropy_curve=np.linspace(1, 0.5, 8), alpha=None, pass1=0.5, pass8=0.9, h0=None,
        )  # fmt: skip
    grouped = find_runs(tmp_path / "runs")
    assert sorted(grouped) == ["20261203-071500-aer", "20261203-081500-fixed", "study/aer"]
    assert [len(runs) for _, runs in sorted(grouped.items())] == [1, 1, 2]


def test_bad_summary_names_the_file(tmp_path: Path) -> None:
    run = tmp_path / "a" / "seed0"
    run.mkdir(parents=True)
    (run / "summary.json").write_text('{"status": "finished",\n oops}')
    with pytest.raises(ValueError, match=r"summary\.json:2"):
        load_run(run)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no run directories"):
        find_runs(tmp_path / "empty")
    with pytest.raises(ValueError, match="not a directory"):
        find_runs(tmp_path / "missing")
    # a mistyped run path is no run, not a run without metrics (which read as a KeyError later)
    with pytest.raises(ValueError, match=r"missing: not a run directory \(no such directory\)"):
        load_run(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"empty: not a run directory \(it holds neither"):
        load_run(tmp_path / "empty")


def test_held_out_pass_at_k_during_training(ablation_dir: Path) -> None:
    """Runs that evaluated every N steps get a table per pass@k over steps and a plot; others none."""
    doc = write_report(ablation_dir)
    assert "during" not in doc["arms"]["aer"] and not (ablation_dir / "during.png").exists()
    assert "during training" not in (ablation_dir / "report.md").read_text()
    for seed in (0, 1):
        write_fake_run(
            ablation_dir / "aer" / f"seed{seed}", controller="aer", seed=seed,
            entropy_curve=np.full(40, 0.3), alpha=np.zeros(40), pass1=0.5, pass8=0.9, h0=0.6,
            evals={
                "step_20": {"pass@1": 0.35 + 0.1 * seed, "pass@4": 0.6, "pass@8": 0.7},
            },
        )  # fmt: skip
    doc = write_report(ablation_dir)
    during = doc["arms"]["aer"]["during"]
    assert list(during) == ["0", "20", "40"]  # 40 = the last step: `after` (pass1 0.5) is not repeated
    assert during["0"]["pass@1"]["mean"] == pytest.approx(0.3)  # the evaluation before training
    assert during["20"]["pass@1"]["mean"] == pytest.approx(0.4)
    assert during["20"]["pass@1"]["std"] == pytest.approx(np.std([0.35, 0.45], ddof=1))
    assert during["40"]["pass@8"]["values"] == [0.9, 0.9]  # the evaluation after training
    assert "during" not in doc["arms"]["fixed:alpha=0"]
    md = (ablation_dir / "report.md").read_text()
    assert "## Held-out pass@1 during training" in md and "## Held-out pass@8 during training" in md
    assert "| `aer` | 0.300 ± 0.000 | 0.400 ± 0.071 | 0.500 ± 0.000 |" in md
    assert "| `fixed:alpha=0` | – | – | – |" in md
    assert (ablation_dir / "during.png").stat().st_size > 500 and "](during.png)" in md


def test_summary_off_the_contract_names_the_file_and_field(tmp_path: Path) -> None:
    run = tmp_path / "arm" / "seed0"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"status": "finished", "steps": "many"}))
    with pytest.raises(ValueError, match=r"seed0/summary\.json: not a run summary: steps: .*\(got 'many'\)"):
        load_run(run)


def write_flat_run(run_dir: Path, controller: str, seed: int, level: float, target: float | None) -> None:
    """A 120-step run whose entropy sits at ``level`` throughout, α = 0.01, H* = ``target`` (None: no
    target, as a fixed α logs)."""
    write_fake_run(
        run_dir,
        controller=controller,
        seed=seed,
        entropy_curve=np.full(120, level),
        alpha=np.full(120, 0.01),
        pass1=0.4,
        pass8=0.8,
        h0=None if target is None else 1.0,
        target=target,
    )


def test_the_band_table_reads_the_arms_with_a_target(tmp_path: Path) -> None:
    """Two aer runs with H* = 0.4 over 120 steps: seed 0 at the target throughout (in band from its
    first full window, step 50, and settled there), seed 1 at 0.2 (never in band); a fixed-α arm has no
    target and no row."""
    root = tmp_path / "abl"
    for seed, level in ((0, 0.4), (1, 0.2)):
        write_flat_run(root / "aer" / f"seed{seed}", "aer", seed, level, 0.4)
    write_flat_run(root / "fixed" / "seed0", "fixed", 0, 0.4, None)
    doc = write_report(root)
    band = doc["arms"]["aer"]["band"]
    assert band["runs"] == 2 and band["reached"] == 1 and band["settled_in_first_half"] == 1
    assert band["first_in_band"]["mean"] == 50 and band["in_band"]["mean"] == 1.0
    assert band["alpha_at_bound"]["mean"] == 0.0  # α = 0.01 within aer's default bounds
    assert [r["band"]["first_in_band"] for r in doc["arms"]["aer"]["runs"]] == [50, None]
    assert doc["arms"]["fixed"]["band"] is None
    text = (root / "report.md").read_text()
    assert "## Entropy band" in text
    assert "| `aer` | 1/2 | 50 | 1.00 | 0.00 | 0.00 | 0.00 | 1/2 |" in text
    assert "| `fixed` |" not in text.split("## Entropy band")[1].split("##")[0]


def test_one_run_directory_is_a_report_of_one_arm_with_its_band(tmp_path: Path) -> None:
    """`entropyctl report RUN_DIR` on a single run (what docs/tuning.md suggests for your own run)."""
    run = tmp_path / "my-run"
    write_flat_run(run, "aer", 0, 0.4, 0.4)
    doc = write_report(run)
    assert list(doc["arms"]) == ["my-run"]
    assert doc["arms"]["my-run"]["band"]["settled_in_first_half"] == 1
    assert "| `my-run` | 1/1 | 50 | 1.00 |" in (run / "report.md").read_text()


def test_malformed_run_files_are_one_error_naming_the_file(tmp_path: Path) -> None:
    """A damaged config.yaml, ablation.json or evaluation record ended the report in a YAML / JSON /
    attribute traceback (after every run of an ablate had finished, so its report was never written)."""
    from entropyctl.experiments.aggregate import ReportError

    run = tmp_path / "study" / "aer" / "seed0"
    write_fake_run(
        run, controller="aer", seed=0, entropy_curve=np.linspace(1, 0.5, 8), alpha=None, pass1=0.5, pass8=0.9,
        h0=None,
    )  # fmt: skip
    good_config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text("controller: {name: aer\n")
    with pytest.raises(ReportError, match=r"config\.yaml: unreadable"):
        load_run(run)
    (run / "config.yaml").write_text(good_config)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(
        json.dumps({**summary, "after": {**summary["after"], "by_level": [1, 2]}})
    )
    with pytest.raises(ReportError, match=r"summary\.json: after is not a pass@k record"):
        load_run(run)
    (run / "summary.json").write_text(json.dumps(summary))
    for manifest in ("{", "[]", '{"arms": [{"slug": "aer"}]}', '{"arms": {"aer": 1}}'):
        (tmp_path / "study" / "ablation.json").write_text(manifest)
        with pytest.raises(ReportError, match=r"ablation\.json: (unreadable|not an ablation manifest)"):
            write_report(tmp_path / "study")


def test_a_report_that_cannot_be_written_is_refused_before_anything_is(tmp_path: Path) -> None:
    """A mistyped root was created (an empty folder left behind), an --out naming a file ended in a
    FileExistsError traceback, and a window below 1 was written into the report."""
    from entropyctl.experiments.aggregate import ReportError

    with pytest.raises(ReportError, match="not a directory"):
        write_report(tmp_path / "typo")
    assert not (tmp_path / "typo").exists()
    run = tmp_path / "my-run"
    write_flat_run(run, "aer", 0, 0.4, 0.4)
    (tmp_path / "taken.json").write_text("{}")
    with pytest.raises(ReportError, match=r"taken\.json: cannot write the report there"):
        write_report(run, tmp_path / "taken.json")
    for window in (0, -3):
        with pytest.raises(ReportError, match=rf"window: must be ≥ 1 steps \(got {window}\)"):
            write_report(run, window=window)
    assert not (run / "report.md").exists()


def test_before_rl_is_one_line_only_when_every_arm_shares_it(tmp_path: Path) -> None:
    """A folder of train runs scored on different held-out problems was reported with the first run's
    numbers as 'the shared warm-start checkpoint, same evaluation'."""
    for name, seed in (("a", 0), ("b", 0)):
        write_fake_run(
            tmp_path / "runs" / name, controller="aer", seed=seed, entropy_curve=np.linspace(1, 0.5, 8),
            alpha=None, pass1=0.5, pass8=0.9, h0=None,
        )  # fmt: skip
    write_report(tmp_path / "runs")
    assert (
        "Before RL (the shared warm-start checkpoint, same evaluation): pass@1 = 0.300"
        in (tmp_path / "runs" / "report.md").read_text()
    )
    summary = json.loads((tmp_path / "runs" / "b" / "summary.json").read_text())
    summary["before"]["pass@1"] = 0.125  # another held-out set
    (tmp_path / "runs" / "b" / "summary.json").write_text(json.dumps(summary))
    write_report(tmp_path / "runs")
    text = (tmp_path / "runs" / "report.md").read_text()
    assert "shared warm-start checkpoint" not in text
    assert "Before RL the arms' evaluations differ" in text and "`b` pass@1 = 0.125" in text


def test_the_per_level_tables_give_each_arms_before_row_when_warm_starts_differ(tmp_path: Path) -> None:
    """The per-level tables' 'before RL' row was the first arm's even when the arms' warm starts were
    evaluated apart and differ (the summary line said so; the row did not)."""
    for name in ("a", "b"):
        write_fake_run(
            tmp_path / "runs" / name, controller="aer", seed=0, entropy_curve=np.linspace(1, 0.5, 8),
            alpha=None, pass1=0.5, pass8=0.9, h0=None,
        )  # fmt: skip
    write_report(tmp_path / "runs")
    shared = (tmp_path / "runs" / "report.md").read_text()
    assert "| before RL |" in shared and "before RL (`" not in shared
    summary = json.loads((tmp_path / "runs" / "b" / "summary.json").read_text())
    summary["before"]["by_level"]["1"]["pass@1"] = 0.0625
    (tmp_path / "runs" / "b" / "summary.json").write_text(json.dumps(summary))
    write_report(tmp_path / "runs")
    text = (tmp_path / "runs" / "report.md").read_text()
    assert "| before RL (`a`) | 0.500 |" in text and "| before RL (`b`) | 0.062 |" in text
    assert "| before RL |" not in text
