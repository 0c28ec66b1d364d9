"""`entropyctl ablate` end to end: 2 arms × 1 seed of real (tiny) training, the report, and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from trainer_helpers import PACED_REWARD, PACED_REWARD_NAME, wait_rows

from entropyctl.config import ConfigError
from entropyctl.trainer.run_dir import PARENT_ENV

# A few steps of the embedded task on a very small model with a tiny warm start: fast, but every
# part of a real run (warm start, rollouts, rewards, controller, evaluation, run dir) is exercised.
TINY = {
    "model": {
        "kind": "tiny",
        "tiny": {"hidden_size": 32, "layers": 1, "heads": 2, "max_position_embeddings": 64},
        "pretrain": {"steps": 20, "batch_size": 16, "warmup_steps": 2},
    },
    "data": {"levels": [1, 2]},
    "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 4},
    "trainer": {"steps": 3, "tensorboard": False, "progress_bar": False},
    "eval": {"n_prompts": 4, "n_samples": 4, "ks": [1, 2, 4]},
}
PLOTS = ("entropy.png", "alpha.png", "accuracy_by_level.png", "pass_at_k.png")


def _ablate(base: Path, out: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ENTROPYCTL_CACHE": str(cache)}
    cmd = [
        sys.executable, "-m", "entropyctl.cli", "ablate", "--config", str(base),
        "--arms", "fixed:alpha=0.01", "aer:tau=0.5", "--seeds", "1", "--jobs", "2", "--out", str(out),
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)


@pytest.mark.slow
def test_ablate_two_arms_report_and_resume(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "abl"
    first = _ablate(base, out, tmp_path / "cache")
    logs = "\n".join(p.read_text()[-3000:] for p in out.rglob("train.log"))
    assert first.returncode == 0, first.stdout + first.stderr + logs

    runs = {arm: out / arm / "seed0" for arm in ("fixed_alpha=0.01", "aer_tau=0.5")}
    for run in runs.values():
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["steps"] == 3
        assert (run / "metrics.csv").exists() and (run / "config.yaml").exists()
    # Same seed and everything but the controller identical across arms.
    configs = [yaml.safe_load((run / "ablate_config.yaml").read_text()) for run in runs.values()]
    # The arm's flat key lands in its nested place (anchor.tau) of the resolved controller config.
    assert configs[0]["controller"]["name"] == "fixed" and configs[1]["controller"]["anchor"]["tau"] == 0.5
    assert [c.pop("controller") and c for c in configs][0] == configs[1]

    md = (out / "report.md").read_text()
    for column in (
        "pass@1",
        "pass@2",
        "pass@4",
        "H/H0 (last ¼)",
        "collapse",
        "explosion",
        "α range",
        "level 2",
    ):
        assert column in md, column
    for plot in PLOTS:
        assert (out / plot).stat().st_size > 1000 and f"]({plot})" in md
    report = json.loads((out / "report.json").read_text())
    assert list(report["arms"]) == ["fixed:alpha=0.01", "aer:tau=0.5"]
    fixed = report["arms"]["fixed:alpha=0.01"]
    assert fixed["n_finished"] == 1 and fixed["alpha_range"] == pytest.approx([0.01, 0.01])
    assert 0.0 <= fixed["after"]["pass@1"]["mean"] <= fixed["after"]["pass@4"]["mean"] <= 1.0

    # Rerun: both runs are finished, so nothing trains again and the results are untouched.
    stamps = {run: (run / "summary.json").stat().st_mtime_ns for run in runs.values()}
    second = _ablate(base, out, tmp_path / "cache")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "2 finished (skipped), 0 to run" in second.stdout
    # `--seeds 1` is a count: the plan names the seed it runs and how to ask for seed 1 instead
    assert "2 arms × 1 seeds (0) = 2 runs" in second.stdout
    assert "seeds 1 is a count (seeds 0); for seed 1 alone write 1," in second.stdout
    assert all((run / "summary.json").stat().st_mtime_ns == stamp for run, stamp in stamps.items())

    # An unfinished run is run again; the finished one is still skipped.
    summary_path = runs["aer_tau=0.5"] / "summary.json"
    summary_path.write_text(json.dumps({**json.loads(summary_path.read_text()), "status": "running"}))
    third = _ablate(base, out, tmp_path / "cache")
    assert third.returncode == 0, third.stdout + third.stderr
    assert "1 finished (skipped), 1 to run" in third.stdout
    assert json.loads(summary_path.read_text())["status"] == "finished"
    assert (runs["fixed_alpha=0.01"] / "summary.json").stat().st_mtime_ns == stamps[runs["fixed_alpha=0.01"]]


def test_a_second_ablate_into_the_same_directory_keeps_the_first_ones_arms(tmp_path: Path) -> None:
    """Adding arms with a second command (same --out) used to overwrite ablation.json with the new arms
    only, hiding the first command's finished runs from the report and from find_runs."""
    from entropyctl.experiments.ablate import merged_manifest

    def manifest(command: str, slugs: list[str], seeds: list[int]) -> dict:
        arms = [{"label": s, "slug": s, "controller": s, "overrides": {}, "seeds": seeds} for s in slugs]
        return {
            "command": command,
            "base_config": "b.yaml",
            "set": [],
            "seeds": seeds,
            "jobs": 2,
            "arms": arms,
        }

    path = tmp_path / "ablation.json"
    first = merged_manifest(path, manifest("first", ["a", "b"], [0, 1, 2]))
    assert first["commands"] == ["first"] and [a["slug"] for a in first["arms"]] == ["a", "b"]
    path.write_text(json.dumps(first))
    second = merged_manifest(path, manifest("second", ["c", "a"], [0]))
    assert [a["slug"] for a in second["arms"]] == ["b", "c", "a"]
    assert second["seeds"] == [0, 1, 2] and second["commands"] == ["first", "second"]
    # each arm keeps the seeds it was run with: c only 0; a both invocations' (0, 1, 2)
    assert {a["slug"]: a["seeds"] for a in second["arms"]} == {"b": [0, 1, 2], "c": [0], "a": [0, 1, 2]}
    assert second["command"] == "second"
    # a damaged manifest is one error naming it: replacing it dropped the earlier commands' arms from the
    # report without a word (their runs finished on disk)
    for damaged in ("not json", json.dumps(first)[:100], "[1, 2]"):
        path.write_text(damaged)
        with pytest.raises(
            ConfigError,
            match=r"ablation\.json: (unreadable|not an ablation manifest).*restore it, or delete it",
        ):
            merged_manifest(path, manifest("third", ["d"], [0]))


def _paced_ablation(tmp_path: Path, steps: int, seeds: int) -> tuple[list[str], dict[str, str], Path]:
    """An `ablate` of one arm (fixed α 0.01) whose runs take a paced reward, so a signal lands mid-run:
    its command, its environment and its output folder."""
    (tmp_path / "paced_reward_mod.py").write_text(PACED_REWARD)
    base = tmp_path / "base.yaml"
    config = {**TINY, "reward": {"name": PACED_REWARD_NAME}}
    config["trainer"] = {**TINY["trainer"], "steps": steps, "checkpoint_every": 100}
    base.write_text(yaml.safe_dump(config))
    out = tmp_path / "abl"
    env = {**os.environ, "ENTROPYCTL_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(tmp_path)}
    cmd = [
        sys.executable, "-m", "entropyctl.cli", "ablate", "--config", str(base),
        "--arms", "fixed:alpha=0.01", "--seeds", str(seeds), "--jobs", "1", "--out", str(out),
    ]  # fmt: skip
    return cmd, env, out


@pytest.mark.slow
def test_sigterm_to_ablate_stops_its_runs_and_the_same_command_resumes_them(tmp_path: Path) -> None:
    """A SIGTERM to `ablate` used to kill only ablate: its `train` children went on as orphans, and the
    next `ablate` ran a stopped run again from step 0."""
    steps = 6
    cmd, env, out = _paced_ablation(tmp_path, steps, seeds=2)
    first, second = out / "fixed_alpha=0.01" / "seed0", out / "fixed_alpha=0.01" / "seed1"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    wait_rows(first, 2, proc, limit=300)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=180)
    assert proc.returncode == 143, stdout[-3000:]
    summary = json.loads((first / "summary.json").read_text())
    assert summary["status"] == "stopped" and 2 <= summary["steps"] < steps, summary
    assert (first / "checkpoints" / "last.ckpt").is_file()
    with pytest.raises(ProcessLookupError):  # the run did not outlive ablate
        os.kill(int(summary["pid"]), 0)
    assert not (second / "summary.json").exists()  # not started after the signal
    assert json.loads((out / "ablation_runs.json").read_text())[-1]["stopped"] == signal.SIGTERM
    assert "stopped by signal 15" in stdout and "the same command continues" in stdout

    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    resumed = json.loads((first / "summary.json").read_text())
    assert resumed["status"] == "finished" and resumed["steps"] == steps
    assert resumed["resume"]["changes"] == []  # continued from its checkpoint, same config
    rows = (first / "metrics.csv").read_text().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in rows] == list(range(1, steps + 1))
    log = (first / "train.log").read_text()
    assert "--overwrite" in log and "--resume auto" in log  # one log, both parts
    assert json.loads((second / "summary.json").read_text())["status"] == "finished"


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_a_run_stops_with_a_checkpoint_when_ablate_is_killed(tmp_path: Path) -> None:
    """SIGKILL cannot be caught: ablate could not pass it on, and its `train` went on alone. Each run
    now watches that ablate is still its parent: it sends itself one SIGTERM and stops as on any."""
    cmd, env, out = _paced_ablation(tmp_path, 40, seeds=1)
    run = out / "fixed_alpha=0.01" / "seed0"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    wait_rows(run, 2, proc, limit=300)
    pid = int(json.loads((run / "summary.json").read_text())["pid"])
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the run finishes its step, writes last.ckpt and exits
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
        raise AssertionError("the run outlived the ablate that was killed")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["steps"] < 40, summary
    assert (run / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_a_run_whose_ablate_is_gone_does_not_start(tmp_path: Path) -> None:
    """The tie is made at the run's start: if ablate died just before, the run is not started."""
    env = {**os.environ, PARENT_ENV: "1"}  # not this test's process: "gone"
    result = subprocess.run(
        [sys.executable, "-m", "entropyctl.cli", "train", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 143 and "is gone: not started" in result.stderr
    assert not (tmp_path / "run").exists()


def test_seed_names_shows_the_seeds_a_plan_runs() -> None:
    from entropyctl.experiments.ablate import seed_names

    assert seed_names([0]) == "0"
    assert seed_names([0, 1]) == "0, 1"
    assert seed_names(list(range(10))) == "0-9"
    assert seed_names([5, 6, 7]) == "5-7"
    assert seed_names([0, 3, 5]) == "0, 3, 5"


def test_a_new_seed_of_an_arm_launched_with_another_config_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second `ablate` into the same --out with a changed base config and only new seeds ran, and the
    report then averaged the two configs as one arm. Training is replaced by writing what a run writes."""
    import entropyctl.experiments.ablate as ablate

    quiet = _fake_runs(monkeypatch)
    out, base = tmp_path / "abl", {"controller": {"name": "aer"}}
    ablate.run_ablation(base, ["aer"], [0], out=out, **quiet)
    ablate.run_ablation(base, ["aer"], [1], out=out, **quiet)  # same config, a new seed: fine
    with pytest.raises(ConfigError, match=r"seed0: a run of arm 'aer' launched with another config"):
        ablate.run_ablation(base, ["aer"], [2], out=out, overrides=["controller.anchor.tau=0.9"], **quiet)
    assert not (out / "aer" / "seed2").exists()


def _fake_runs(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Replace training by writing what a finished run writes (its configs and summary)."""
    import entropyctl.experiments.ablate as ablate

    def write_runs(todo, jobs, threads, log, children):  # type: ignore[no-untyped-def]
        for spec in todo:
            spec.run_dir.mkdir(parents=True, exist_ok=True)
            (spec.run_dir / "ablate_config.yaml").write_text(yaml.safe_dump(spec.config, sort_keys=False))
            (spec.run_dir / "summary.json").write_text(json.dumps({"status": "finished"}))
        return {str(s.run_dir): {"returncode": 0, "seconds": 0, "finished": True} for s in todo}, []

    monkeypatch.setattr(ablate, "_run_all", write_runs)
    return {"report": False, "warm_start": False, "log": lambda line: None}


@pytest.mark.parametrize(
    ("seeds", "section", "message"),
    [
        ([1, 1], {}, "seeds: seed 1 is listed twice"),
        (None, {"seeds": "10"}, r"ablation.seeds: expected a count N ≥ 1 or a list .*got '10'"),
        (None, {"seeds": 3.0}, "ablation.seeds: expected a count"),
        (None, {"seeds": [0, True]}, "ablation.seeds: expected a count"),
        (0, {}, "seeds: a count of seeds must be ≥ 1"),
        ([0], {"jobs": "two"}, r"ablation.jobs: expected a number of parallel runs ≥ 1 \(got 'two'\)"),
    ],
)
def test_seeds_and_jobs_that_would_mix_or_crash_runs_are_refused(
    seeds: object, section: dict[str, object], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seeds 1,1 started two runs in one directory (one failed on its lock, its log overwritten); a string
    count became [1, 0]; a float or a word for jobs ended in a traceback."""
    import entropyctl.experiments.ablate as ablate

    quiet = _fake_runs(monkeypatch)
    base = {"controller": {"name": "aer"}, "ablation": section}
    with pytest.raises(ConfigError, match=message):
        ablate.run_ablation(base, ["aer"], seeds, out=tmp_path / "abl", **quiet)  # type: ignore[arg-type]
    assert not (tmp_path / "abl").exists()


def test_an_arm_labelled_dot_dot_stays_inside_out(tmp_path: Path) -> None:
    from entropyctl.experiments.ablate import parse_arms, plan_runs

    for label in ("..", "."):
        (arm,) = parse_arms([{"name": "fixed", "label": label}])
        (spec,) = plan_runs({}, [arm], [0], tmp_path / "study")
        assert (tmp_path / "study").resolve() in spec.run_dir.resolve().parents


def test_a_run_ablate_did_not_launch_is_read_by_the_config_it_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished run copied into an arm's seed folder (no ablate_config.yaml) was skipped as done and
    reported as the arm, whatever its config."""
    import entropyctl.experiments.ablate as ablate
    from entropyctl.config import load_run_config

    quiet = _fake_runs(monkeypatch)
    run = tmp_path / "abl" / "aer" / "seed0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(load_run_config(None, ["trainer.steps=2"]).to_yaml())
    (run / "summary.json").write_text(json.dumps({"status": "finished"}))
    with pytest.raises(
        ConfigError, match=r"seed0: holds a run of a different config than arm 'aer' .*optim.lr"
    ):
        ablate.run_ablation({"trainer": {"steps": 30}}, ["aer"], [0], out=tmp_path / "abl", **quiet)
    (run / "config.yaml").unlink()
    with pytest.raises(ConfigError, match=r"seed0: holds run files \(summary.json\) but no config"):
        ablate.run_ablation({"trainer": {"steps": 30}}, ["aer"], [0], out=tmp_path / "abl", **quiet)


def test_a_second_ablate_on_the_same_directory_is_refused_while_the_first_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import entropyctl.experiments.ablate as ablate
    from entropyctl.trainer.run_dir import RunLock, RunLockedError

    quiet = _fake_runs(monkeypatch)
    out = tmp_path / "abl"
    held = RunLock(out, name=ablate.ABLATE_LOCK, user="entropyctl ablate").acquire()  # the first ablate
    try:
        with pytest.raises(RunLockedError, match="another entropyctl ablate is using this directory"):
            ablate.run_ablation({}, ["aer"], [0], out=out, **quiet)
        assert not (out / "ablation.json").exists() and not (out / "aer").exists()
    finally:
        held.release()
    ablate.run_ablation({}, ["aer"], [0], out=out, **quiet)  # released: it runs
    assert (out / "aer" / "seed0" / "summary.json").exists()


def test_an_unreadable_run_history_is_kept_aside_not_a_crash_after_the_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import entropyctl.experiments.ablate as ablate

    quiet = _fake_runs(monkeypatch)
    out = tmp_path / "abl"
    out.mkdir()
    (out / "ablation_runs.json").write_text('[{"command": "first", "wall')
    lines: list[str] = []
    ablate.run_ablation({}, ["aer"], [0], out=out, **{**quiet, "log": lines.append})
    assert len(json.loads((out / "ablation_runs.json").read_text())) == 1
    (aside,) = out.glob("ablation_runs.json.unreadable-*")
    assert aside.read_text() == '[{"command": "first", "wall'
    assert any("was unreadable" in line for line in lines)


def test_seeds_may_be_any_sequence_of_integers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    import entropyctl.experiments.ablate as ablate

    quiet = _fake_runs(monkeypatch)
    for seeds in (range(2), (0, 1), [np.int64(0), np.int64(1)]):
        summary = ablate.run_ablation({}, ["aer"], seeds, out=tmp_path / "abl", **quiet)  # type: ignore[arg-type]
        assert summary["runs"] == 2


def test_a_manifest_the_report_would_refuse_is_refused_before_any_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import entropyctl.experiments.ablate as ablate

    quiet = _fake_runs(monkeypatch)
    (tmp_path / "abl").mkdir()
    (tmp_path / "abl" / "ablation.json").write_text('{"arms": [{"slug": "old"}]}')
    with pytest.raises(ConfigError, match=r"ablation\.json: not an ablation manifest.*restore it"):
        ablate.run_ablation({}, ["aer"], [0], out=tmp_path / "abl", **{**quiet, "report": True})
    assert not (tmp_path / "abl" / "aer").exists()


def test_arms_added_with_other_settings_are_reported_with_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second command adding an arm with another --set replaced the manifest's settings: the report said
    'overrides for all arms: [trainer.steps=3]', false for the earlier arms."""
    import entropyctl.experiments.ablate as ablate
    from entropyctl.experiments.markdown import _md_header

    quiet = _fake_runs(monkeypatch)
    out = tmp_path / "abl"
    ablate.run_ablation({}, ["aer", "fixed"], [0], out=out, overrides=["trainer.steps=2"], **quiet)
    ablate.run_ablation({}, ["fixed:alpha=0.001"], [0], out=out, overrides=["trainer.steps=3"], **quiet)
    manifest = json.loads((out / "ablation.json").read_text())
    assert {a["label"]: a["set"] for a in manifest["arms"]} == {
        "aer": ["trainer.steps=2"], "fixed": ["trainer.steps=2"], "fixed:alpha=0.001": ["trainer.steps=3"],
    }  # fmt: skip
    header = "\n".join(_md_header(manifest, ["pass@1"]))
    assert "overrides for all arms" not in header and "ran with different base configs or overrides" in header
    assert "- `aer`: base config `<dict>`, overrides ['trainer.steps=2']" in header
