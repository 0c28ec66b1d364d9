"""Runs never lose or mix results: overwrite refusal, one run per directory (lock), resume only into
the same run (fingerprint), SIGTERM/SIGINT stop cleanly and resume exactly, honest statuses."""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from trainer_helpers import PACED, PACED_REWARD, SMALL, TINY, read_metrics, tiny_config, wait_rows

from entropyctl.config import ConfigError
from entropyctl.trainer.run import run_training
from entropyctl.trainer.run_dir import (
    LOCK_FILE,
    ResumeMismatchError,
    RunDirError,
    RunLock,
    RunLockedError,
    read_run_state,
)

TIMING = ("time_sync", "time_rollout", "time_reward", "time_update", "time_step")
QUICK = ["trainer.steps=2", "eval.before=false", "eval.after=false"]


def _comparable(rows: list[dict[str, float]]) -> list[dict[str, Any]]:
    return [{k: ("nan" if math.isnan(v) else v) for k, v in row.items() if k not in TIMING} for row in rows]


def test_reusing_a_run_dir_is_refused_and_overwrite_removes_only_run_files(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_training(tiny_config(*QUICK, "trainer.checkpoint_every=1"), run_dir)
    (run_dir / "notes.txt").write_text("mine")
    before = (run_dir / "metrics.csv").read_text()
    with pytest.raises(RunDirError, match="already holds a run .*--resume auto.*--overwrite"):
        run_training(tiny_config(*QUICK, "trainer.steps=1"), run_dir)
    assert (run_dir / "metrics.csv").read_text() == before  # refused before touching anything
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"

    summary = run_training(tiny_config(*QUICK, "trainer.steps=1"), run_dir, overwrite=True)
    assert summary["steps"] == 1
    assert [r["step"] for r in read_metrics(run_dir)] == [1]
    # the old run's step-*.ckpt are gone with it; a file that is not the run's stays
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]
    assert (run_dir / "notes.txt").read_text() == "mine"


def test_a_run_that_failed_before_its_first_checkpoint_is_not_offered_a_resume(tmp_path: Path) -> None:
    """A run that failed at start (a bad data file, say) leaves its config and a failed summary: the
    refusal to reuse the directory says so and points to --overwrite, not to a resume of nothing."""
    from entropyctl.trainer.run_dir import prepare_run_dir

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("seed: 0\n")
    (run_dir / "summary.json").write_text(
        json.dumps({"status": "failed", "error": "ValueError: bad.jsonl:3"})
    )
    with pytest.raises(
        RunDirError, match=r"failed before its first checkpoint: ValueError: bad\.jsonl:3; .*--overwrite"
    ):
        prepare_run_dir(run_dir, resume=False, overwrite=False, log=print)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_text("")
    with pytest.raises(RunDirError, match=r"pass --resume auto to continue it"):
        prepare_run_dir(run_dir, resume=False, overwrite=False, log=print)


def test_a_lock_file_removed_between_its_open_and_its_lock_is_not_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused run removes the folder it created while holding its lock; a process that opened the lock
    file just before got the lock on a file no longer at the path once it was released (two holders once
    a third recreated it): acquire checks that its file is still the one at the path."""
    import fcntl

    from entropyctl.trainer.run_dir import RunLock, RunLockedError

    real = fcntl.flock

    def removed_meanwhile(fd: int, op: int) -> None:
        (tmp_path / "run.lock").unlink()  # the other process unlinks it after our open, before our lock
        real(fd, op)

    monkeypatch.setattr(fcntl, "flock", removed_meanwhile)
    with pytest.raises(RunLockedError, match="was removing this directory as it was opened; run again"):
        RunLock(tmp_path).acquire()
    monkeypatch.setattr(fcntl, "flock", real)
    lock = RunLock(tmp_path).acquire()  # the next try takes a file at the path
    assert lock.held
    lock.release()


def test_another_runs_checkpoint_is_not_continued_into_a_directory_holding_a_run(tmp_path: Path) -> None:
    """--resume A/checkpoints/last.ckpt --out B, B holding a run of its own: the resume skipped the reuse
    check, and B's metrics.csv held B's first steps then A's continuation under A's config."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    run_training(tiny_config(*QUICK), a)
    run_training(tiny_config(*QUICK, "controller.name=fixed", "controller.alpha=0.5"), b)
    before = {name: (b / name).read_text() for name in ("metrics.csv", "config.yaml", "summary.json")}
    longer = tiny_config(*QUICK, "trainer.steps=3")
    with pytest.raises(RunDirError, match=r"is not one of its checkpoints: .* mix the two runs"):
        run_training(longer, b, resume=a / "checkpoints" / "last.ckpt")
    assert {name: (b / name).read_text() for name in before} == before
    # into a new directory, or over B with --overwrite, the continuation runs; B's own resume still does
    assert run_training(longer, c, resume=a / "checkpoints" / "last.ckpt")["steps"] == 3
    assert run_training(longer, b, resume=a / "checkpoints" / "last.ckpt", overwrite=True)["steps"] == 3
    assert [r["step"] for r in read_metrics(b)] == [3]
    assert run_training(tiny_config(*QUICK, "trainer.steps=4"), b, resume="auto")["steps"] == 4
    # a continuation that failed before its first checkpoint (its config and failed summary only) is retried
    d = tmp_path / "d"
    d.mkdir()
    (d / "config.yaml").write_text(longer.to_yaml())
    (d / "summary.json").write_text(json.dumps({"status": "failed", "error": "OSError: disk full"}))
    assert run_training(longer, d, resume=a / "checkpoints" / "last.ckpt")["steps"] == 3


def test_resume_auto_without_last_ckpt_does_not_start_over_a_run(tmp_path: Path) -> None:
    """--resume auto reads checkpoints/last.ckpt. A run that kept none (trainer.save_last false) was
    started afresh on top of itself: metrics.csv cut to the new run's rows and config.yaml overwritten,
    without a word. Now it is refused like any reuse of a directory holding a run, with advice that
    fits: a step checkpoint to name when there is one, --overwrite otherwise."""
    run_dir = tmp_path / "run"
    run_training(tiny_config(*QUICK, "trainer.save_last=false", "trainer.checkpoint_every=100"), run_dir)
    before = (run_dir / "metrics.csv").read_text(), (run_dir / "config.yaml").read_text()
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()
    changed = tiny_config(*QUICK, "trainer.save_last=false", "controller.anchor.tau=0.1", "trainer.steps=1")
    with pytest.raises(RunDirError, match=r"no checkpoint to continue from: pass --overwrite"):
        run_training(changed, run_dir, resume="auto")
    assert ((run_dir / "metrics.csv").read_text(), (run_dir / "config.yaml").read_text()) == before
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    (run_dir / "checkpoints" / "step-000002.ckpt").write_text("")
    with pytest.raises(
        RunDirError, match=r"no checkpoints/last\.ckpt for --resume auto: pass --resume \S+step-000002"
    ):
        run_training(changed, run_dir, resume="auto")
    # a fresh directory still starts with --resume auto (nothing to continue, nothing to lose)
    summary = run_training(changed, tmp_path / "fresh", resume="auto")
    assert summary["status"] == "finished"


def test_keep_checkpoints_deletes_only_older_step_checkpoints(tmp_path: Path) -> None:
    """trainer.keep_checkpoints: the N most recent step checkpoints stay (the one just written counts);
    last.ckpt and a step checkpoint of a later step (an abandoned continuation's) are never removed."""
    run_dir = tmp_path / "run"
    config = ["eval.before=false", "eval.after=false", "trainer.checkpoint_every=1"]
    run_training(tiny_config(*config, "trainer.steps=3", "trainer.keep_checkpoints=2"), run_dir)
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step-000002.ckpt", "step-000003.ckpt"]

    (ckpts / "step-000009.ckpt").write_text("a later step of another continuation")
    summary = run_training(
        tiny_config(*config, "trainer.steps=5", "trainer.keep_checkpoints=1"), run_dir, resume="auto"
    )  # keep_checkpoints changes no result: a resume may change it
    assert summary["status"] == "finished" and summary["steps"] == 5
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step-000005.ckpt", "step-000009.ckpt"]
    assert (ckpts / "step-000009.ckpt").read_text() == "a later step of another continuation"
    with pytest.raises(ConfigError, match="keep_checkpoints"):
        tiny_config("trainer.keep_checkpoints=0")


def test_resume_with_changed_config_is_refused_listing_changes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_training(tiny_config(*QUICK, "controller.tau=0.9"), run_dir)
    config_before = (run_dir / "config.yaml").read_text()
    changed = tiny_config(*QUICK, "controller.tau=0.5", "rollout.temperature=0.8", "trainer.steps=3")
    with pytest.raises(ResumeMismatchError) as err:
        run_training(changed, run_dir, resume="auto")
    message = str(err.value)
    assert re.search(r"controller\.(\w+\.)?tau: 0\.9 -> 0\.5", message), message
    assert "rollout.temperature: 1.0 -> 0.8" in message
    assert "trainer.steps" not in message  # more steps is a legitimate resume
    assert (run_dir / "config.yaml").read_text() == config_before

    summary = run_training(changed, run_dir, resume="auto", allow_resume_changes=True)
    assert summary["status"] == "finished" and summary["steps"] == 3
    assert summary["resume"]["changes_allowed"] is True
    assert any("tau: 0.9 -> 0.5" in line for line in summary["resume"]["changes"])


def test_an_allowed_change_of_the_optimizer_settings_takes_effect(tmp_path: Path) -> None:
    """optim.lr / weight_decay / betas / eps changed on a resume with --allow-resume-changes were recorded
    (config.yaml, summary.json) but Lightning restored the checkpoint's optimizer and scheduler over them:
    the run went on at the old rate."""
    import lightning.pytorch as pl

    from entropyctl.trainer.checkpoints import load_checkpoint

    class _SeenAtStep3(pl.Callback):
        """The optimizer's settings as the first resumed step starts (the lr column is the scheduler's
        value after the step: it would show the new rate even if step 3 ran at the old one)."""

        seen: dict[str, Any] = {}

        def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, idx: int) -> None:
            group = trainer.optimizers[0].param_groups[0]
            self.seen.setdefault("group", {k: group[k] for k in ("lr", "weight_decay", "eps", "betas")})

    run_dir = tmp_path / "run"
    run_training(tiny_config(*QUICK, "optim.lr=1e-3"), run_dir)
    new = [
        "optim.lr=5e-2",
        "optim.weight_decay=0.5",
        "optim.eps=1e-6",
        "optim.betas=[0.8,0.9]",
        "trainer.steps=3",
    ]
    summary = run_training(
        tiny_config(*QUICK, *new),
        run_dir,
        resume="auto",
        allow_resume_changes=True,
        callbacks=[_SeenAtStep3()],
    )
    assert _SeenAtStep3.seen["group"] == {"lr": 5e-2, "weight_decay": 0.5, "eps": 1e-6, "betas": (0.8, 0.9)}
    assert any("optim.lr: 0.001 -> 0.05" in line for line in summary["resume"]["changes"])
    assert [row["lr"] for row in read_metrics(run_dir)] == pytest.approx([1e-3, 1e-3, 5e-2])
    state = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    (group,) = state["optimizer_states"][0]["param_groups"]
    assert (group["lr"], group["initial_lr"], group["weight_decay"], group["eps"]) == (5e-2, 5e-2, 0.5, 1e-6)
    assert tuple(group["betas"]) == (0.8, 0.9)
    assert state["lr_schedulers"][0]["base_lrs"] == [5e-2]
    # a further resume without changes: its record says none, and the earlier one's changes are kept
    # (summary.json kept only the latest resume, and config.yaml says lr 0.05 for the whole run)
    again = run_training(tiny_config(*QUICK, *new[:-1], "trainer.steps=4"), run_dir, resume="auto")
    assert again["resume"]["changes"] == [] and again["resume"]["step"] == 3
    (earlier,) = again["resume"]["earlier"]
    assert earlier["step"] == 2 and any("optim.lr: 0.001 -> 0.05" in line for line in earlier["changes"])
    lines = (run_dir / "resumes.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 3]


@pytest.mark.parametrize("change", ["seed=1", "algorithm.ppo_epochs=2", "algorithm.mini_batches=2"])
def test_what_a_resume_cannot_change_is_refused_even_when_changes_are_allowed(
    tmp_path: Path, change: str
) -> None:
    """With --allow-resume-changes a new seed crashed at load (the checkpoint's prompt sampler refused it)
    and a new ppo_epochs / mini_batches ran the wrong number of steps (2 → 4 steps at 1 → 2 epochs ran 5;
    at 2 → 1, none): Lightning restores its count of optimizer steps. Refused before anything runs."""
    run_dir = tmp_path / "run"
    run_training(tiny_config(*QUICK), run_dir)
    before = (run_dir / "metrics.csv").read_text()
    with pytest.raises(
        ResumeMismatchError,
        match=rf"cannot change, even with --allow-resume-changes:\n  {re.escape(change.split('=')[0])}: ",
    ):
        run_training(
            tiny_config(*QUICK, change, "trainer.steps=4"), run_dir, resume="auto", allow_resume_changes=True
        )
    assert (run_dir / "metrics.csv").read_text() == before


def test_changed_data_file_is_a_resume_mismatch(tmp_path: Path) -> None:
    data = Path(__file__).parent / "data" / "gsm8k_sample.jsonl"
    copy = tmp_path / "train.jsonl"
    copy.write_bytes(data.read_bytes())
    config = tiny_config(
        *QUICK, "data.source=file", f"data.path={copy}", "eval.n_prompts=2", "reward.name=exact"
    )
    run_dir = tmp_path / "run"
    run_training(config, run_dir)
    with copy.open("a") as f:
        f.write('{"question": "1+1?", "answer": "#### 2"}\n')
    with pytest.raises(ResumeMismatchError, match=r"data file .*train\.jsonl: contents changed"):
        run_training(tiny_config(*QUICK, "data.source=file", f"data.path={copy}", "eval.n_prompts=2",
                                 "reward.name=exact", "trainer.steps=3"), run_dir, resume="auto")  # fmt: skip


def test_error_before_fit_marks_failed(tmp_path: Path) -> None:
    config = tiny_config(*QUICK, "data.source=file", f"data.path={tmp_path / 'absent.jsonl'}")
    with pytest.raises(Exception):  # noqa: B017 - any error; the point is the status it leaves
        run_training(config, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "absent.jsonl" in summary["error"]
    assert read_run_state(tmp_path / "run") == "failed"


_HOLD = """
import sys, time
from entropyctl.trainer.run_dir import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_lock_names_the_holder_and_a_dead_holder_is_stale(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"pid {holder.pid} on host .*started"):
            RunLock(tmp_path).acquire()
        with pytest.raises(RunLockedError):  # the trainer refuses too, before writing anything
            run_training(tiny_config(*QUICK), tmp_path)
        assert not (tmp_path / "summary.json").exists()
    finally:
        holder.kill()  # kill -9: no clean release, the file still names the dead holder
        holder.wait()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == holder.pid
    lock = RunLock(tmp_path).acquire()
    assert lock.stale is not None and lock.stale["pid"] == holder.pid
    lock.release()
    lock = RunLock(tmp_path).acquire()
    assert lock.stale is None  # a clean release leaves nothing stale
    lock.release()


def test_dead_running_summary_reads_dead(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    import socket

    record = {"status": "running", "pid": proc.pid, "host": socket.gethostname(), "updated_at": "x"}
    (tmp_path / "summary.json").write_text(json.dumps(record))
    assert read_run_state(tmp_path) == "dead"
    record.update(pid=os.getpid())
    (tmp_path / "summary.json").write_text(json.dumps(record))
    assert read_run_state(tmp_path) == "running"
    # another host: the heartbeat's age decides
    record.update(host="elsewhere", updated_at="2020-01-01T00:00:00+00:00", heartbeat_s=30)
    (tmp_path / "summary.json").write_text(json.dumps(record))
    assert read_run_state(tmp_path) == "dead"


# ------------------------------------------------------------------------ processes and signals

STEPS = 7
SIGNAL_RUN = [
    *TINY,
    *SMALL,
    f"trainer.steps={STEPS}",
    "controller.update=additive",  # the first release's rule: alpha moves fast
    "controller.eta=0.5",
    "controller.tau=0.9",
    "eval.before=false",
    "eval.after=false",
    "trainer.threads=1",
]


def _train_cmd(out: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "entropyctl.cli", "train", "--out", str(out)]
    for item in SIGNAL_RUN:
        cmd += ["--set", item]
    return cmd + list(extra)


@pytest.mark.slow
def test_sigterm_at_a_random_step_then_resume_equals_uninterrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    cut = random.Random(seed).randint(1, STEPS - 2)  # signal once this many steps are logged
    (tmp_path / "paced_reward_mod.py").write_text(PACED_REWARD)
    monkeypatch.syspath_prepend(str(tmp_path))
    full = run_training(tiny_config(*SIGNAL_RUN[len(TINY) + len(SMALL) :], *PACED), tmp_path / "full")

    run_dir = tmp_path / "cut"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(tmp_path)}
    paced = [arg for item in PACED for arg in ("--set", item)]
    proc = subprocess.Popen(
        _train_cmd(run_dir, *paced), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    wait_rows(run_dir, cut, proc)
    with pytest.raises(RunLockedError, match=f"pid {proc.pid} on host"):
        RunLock(run_dir).acquire()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, f"seed {seed}: rc {proc.returncode}\n{err[-3000:]}"
    summary = json.loads((run_dir / "summary.json").read_text())
    stopped_at = summary["steps"]
    assert summary["status"] == "stopped" and cut <= stopped_at < STEPS, (seed, summary)
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, stopped_at + 1))
    import torch

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["rlvr"]["step"] == stopped_at  # the last finished step was checkpointed

    resumed = subprocess.run(
        _train_cmd(run_dir, *paced, "--resume", "auto"), capture_output=True, text=True, timeout=300, env=env
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = json.loads((run_dir / "summary.json").read_text())
    assert final["status"] == "finished" and final["steps"] == STEPS
    assert final["controller_state"] == full["controller_state"], seed
    assert _comparable(read_metrics(run_dir)) == _comparable(read_metrics(tmp_path / "full")), seed
    assert len({r["alpha"] for r in read_metrics(run_dir)}) > 1  # the controller state moved


@pytest.mark.slow
def test_two_runs_on_one_dir_then_sigint_stops_with_130(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    long_run = ["--set", "trainer.steps=100000"]
    proc = subprocess.Popen(
        _train_cmd(run_dir, *long_run), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_rows(run_dir, 1, proc)
    # a second run on the same --out (even with --resume auto) fails at once, naming the holder
    second = subprocess.run(
        _train_cmd(run_dir, *long_run, "--resume", "auto"), capture_output=True, text=True, timeout=120
    )
    assert second.returncode != 0 and f"pid {proc.pid} on host" in second.stderr + second.stdout
    assert proc.poll() is None and read_run_state(run_dir) == "running"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped" and (run_dir / "checkpoints" / "last.ckpt").exists()
    assert read_run_state(run_dir) == "stopped"


HANGING_REWARD = """
import os, time
from pathlib import Path

def hang(completion, answer):
    Path(os.environ["ENTROPYCTL_TEST_MARK"]).touch()
    while True:
        time.sleep(0.1)
"""


@pytest.mark.slow
def test_sigterm_while_a_custom_reward_hangs_stops_within_the_grace(tmp_path: Path) -> None:
    # 24 answers x 5 s timeout = 120 s of reward time in the step; the grace (2 s) bounds the stop.
    (tmp_path / "hanging_reward_mod.py").write_text(HANGING_REWARD)
    mark = tmp_path / "reward-called"
    env = {**os.environ, "ENTROPYCTL_TEST_MARK": str(mark), "PYTHONPATH": str(tmp_path)}
    run_dir = tmp_path / "run"
    cmd = _train_cmd(
        run_dir,
        *["--set", "reward.name=hanging_reward_mod:hang", "--set", "reward.options={timeout: 5}"],
        *["--set", "trainer.stop_grace_s=2"],
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 240
    while not mark.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the reward was never called"
        time.sleep(0.05)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode == 143, err[-3000:]
    assert elapsed < 2 + 15, elapsed  # grace + killing the reward worker and writing the summary
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["steps"] == 0
    assert "abandoned" in summary["error"]


def test_a_stop_signal_one_rank_got_at_the_last_step_stops_every_rank(tmp_path: Path) -> None:
    """Under DDP every rank agrees after each step whether a stop was asked (one all-reduce). At the last
    step that agreement was used only to skip the raise (there is no next step to stop before); the
    evaluation after training then raised on the rank that got the signal and entered its collectives
    on the others, which waited for it forever. The agreed signal now stops every rank there."""
    from types import SimpleNamespace

    import torch

    from entropyctl.trainer.module import RLVRCheckpoint
    from entropyctl.trainer.run_dir import RunStopped, StopSignals

    class _Strategy:
        root_device = torch.device("cpu")
        launcher = None

        def reduce(self, tensor: torch.Tensor, reduce_op: str) -> torch.Tensor:
            return tensor + 15.0  # the other rank got SIGTERM

    trainer = SimpleNamespace(
        world_size=2, strategy=_Strategy(), is_global_zero=False, save_checkpoint=lambda *a, **k: None
    )
    stop = StopSignals()  # this rank's: no signal of its own
    callback = RLVRCheckpoint(tmp_path, every=0, total_steps=3, save_last=False, stop=stop)
    module = SimpleNamespace(rlvr_step=3)
    callback.on_train_batch_end(trainer, module, None, None, 0)  # type: ignore[arg-type]
    with pytest.raises(RunStopped) as info:
        callback.on_train_end(trainer, module)  # type: ignore[arg-type]
    assert info.value.exit_code == 128 + 15


@pytest.mark.parametrize(
    "tail",
    ["1", "3,0.5", "\x00" * 64, "3,0.5,0.25", "nan,1,2\n"],
    ids=["one character", "two fields, no newline", "NUL bytes", "a whole row but its newline", "a NaN step"],
)
def test_a_metrics_row_a_crash_cut_short_ends_the_file_on_resume(tmp_path: Path, tail: str) -> None:
    """The resume kept `1,,,` as a row (step 1 twice) or failed on the NULs a crash can leave, so the
    documented way on after a full disk (--resume auto) did not work."""
    from entropyctl.trainer.run_dir import MetricsWriter

    writer = MetricsWriter(tmp_path / "metrics.csv", ["step", "entropy", "alpha"])
    for step in (1, 2, 3):
        writer.write({"step": step, "entropy": 0.5 * step, "alpha": 0.01})
    with (tmp_path / "metrics.csv").open("a", newline="") as f:
        f.write(tail)
    writer.truncate_after(3)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    writer.truncate_after(2)  # and the ordinary cut at the checkpoint's step
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    writer.write({"step": 3, "entropy": 1.5, "alpha": 0.01})
    assert [r["entropy"] for r in read_metrics(tmp_path)] == [0.5, 1.0, 1.5]


def test_run_directory_paths_that_cannot_hold_the_run_are_refused_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out naming a file ended in FileExistsError; --resume auto with neither --out nor run_name started a
    new time-stamped run and exited 0; `output_dir: ~/runs` made a folder named '~'."""
    from entropyctl import cli
    from entropyctl.trainer.run import resolve_run_dir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("mine")
    assert cli.main(["train", "--out", "afile", "--set", "trainer.steps=1"]) == 2
    assert "afile: a file, not a directory" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "mine"
    assert cli.main(["train", "--resume", "auto", "--set", "trainer.steps=1"]) == 2
    assert "--resume auto: continues the run in --out" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = tiny_config("output_dir=~/runs", "run_name=a")
    assert resolve_run_dir(config) == tmp_path / "home" / "runs" / "a"
    assert resolve_run_dir(config, "~/b") == tmp_path / "home" / "b"


def test_a_run_resumed_at_its_last_step_keeps_its_evaluation_after_training(tmp_path: Path) -> None:
    """A finished run resumed again (or one stopped during its evaluation after training, which the
    advice 'resume with --resume auto' then finished) trains nothing: Lightning calls no train hooks, and
    the summary's `after` and `final_entropy` became null — a finished run without results, which ablate
    skips for good."""
    config = tiny_config(
        "trainer.steps=2", "eval.before=false", "eval.n_prompts=4", "eval.n_samples=2", "eval.ks=[1,2]"
    )
    first = run_training(config, tmp_path / "run")
    again = run_training(config, tmp_path / "run", resume="auto")
    assert again["status"] == "finished" and again["steps"] == 2
    assert again["after"] == first["after"] and again["after"] is not None  # same weights, same seeds
    assert again["final_entropy"] == first["final_entropy"] is not None


def test_a_step_that_ended_in_time_saves_its_checkpoints_past_the_grace(tmp_path: Path) -> None:
    """SIGTERM during a step starts trainer.stop_grace_s; the step ends in time, and its periodic checkpoint
    takes longer than what is left of the grace: the timer kept running through the saves and abandoned the
    step (no step checkpoint, last.ckpt a step behind). Now the saves run without a deadline."""
    import os
    import signal
    import time
    from types import SimpleNamespace

    from entropyctl.trainer.module import RLVRCheckpoint
    from entropyctl.trainer.run_dir import RunStopped, StopSignals

    def slow_save(path: str, weights_only: bool = False) -> None:
        time.sleep(0.4)
        Path(path).write_text("saved")

    trainer = SimpleNamespace(world_size=1, is_global_zero=True, save_checkpoint=slow_save)
    stop = StopSignals(grace_s=0.2).install()
    try:
        stop.graceful = True
        callback = RLVRCheckpoint(tmp_path, every=1, total_steps=5, stop=stop)
        os.kill(os.getpid(), signal.SIGTERM)  # during step 2: recorded, the grace timer starts
        time.sleep(0.1)  # the step ends 0.1 s later, inside the grace
        with pytest.raises(RunStopped) as info:
            callback.on_train_batch_end(trainer, SimpleNamespace(rlvr_step=2), None, None, 0)  # type: ignore[arg-type]
        assert not info.value.abandoned
        assert (tmp_path / "step-000002.ckpt").read_text() == "saved" == (tmp_path / "last.ckpt").read_text()
    finally:
        stop.restore()
    # a first signal that arrives during the saves themselves starts no grace timer either
    stop = StopSignals(grace_s=0.2).install()
    try:
        stop.graceful = True
        callback = RLVRCheckpoint(tmp_path, every=1, total_steps=5, stop=stop)

        def signalled_save(path: str, weights_only: bool = False) -> None:
            if not stop.requested:
                os.kill(os.getpid(), signal.SIGTERM)
            slow_save(path, weights_only)

        trainer.save_checkpoint = signalled_save
        with pytest.raises(RunStopped) as info:
            callback.on_train_batch_end(trainer, SimpleNamespace(rlvr_step=3), None, None, 0)  # type: ignore[arg-type]
        assert not info.value.abandoned and (tmp_path / "step-000003.ckpt").read_text() == "saved"
    finally:
        stop.restore()


def test_runs_started_in_the_same_second_get_directories_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default run directory <time>-<controller> is made when it is chosen: a second run of the same
    second gets <time>-<controller>-2 (it got the first one's name, and was refused at its lock)."""
    import time

    from entropyctl.trainer.run import resolve_run_dir

    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20261207-101500")
    config = tiny_config(f"output_dir={tmp_path / 'runs'}")
    first, second, third = (resolve_run_dir(config) for _ in range(3))
    assert [p.name for p in (first, second, third)] == [
        "20261207-101500-aer",
        "20261207-101500-aer-2",
        "20261207-101500-aer-3",
    ]
    assert all(p.is_dir() and not any(p.iterdir()) for p in (first, second, third))


@pytest.mark.parametrize("order", ["terminal first", "forwarded first"])
def test_a_ctrl_c_that_reaches_every_process_stops_each_after_its_step(order: str) -> None:
    """Ctrl-C reaches every process of a multi-process run (one process group), and rank 0 forwards its
    signal to the others as well: each child saw two signals, took the second as "abandon the step", and
    the run died in the next collective without a checkpoint. What rank 0 forwards now only asks for a
    stop after the step, in whichever order the two arrive; a real second signal still abandons."""
    import os
    import signal

    from entropyctl.trainer.run_dir import RunStopped, StopSignals

    sent: list[int] = []
    rank0 = StopSignals()
    rank0.graceful, rank0.forward = True, sent.append
    rank0._handle(int(signal.SIGINT), None)  # rank 0's own Ctrl-C: recorded, and passed on
    (forwarded,) = sent
    child = StopSignals().install()
    try:
        child.graceful = True
        arrivals = [int(signal.SIGINT), forwarded]
        for signum in arrivals if order == "terminal first" else arrivals[::-1]:
            os.kill(os.getpid(), signum)  # neither abandons the step
        assert child.requested == int(signal.SIGINT)
        with pytest.raises(RunStopped) as info:
            os.kill(os.getpid(), signal.SIGINT)  # the user's second Ctrl-C
        assert info.value.abandoned
    finally:
        child.restore()
        rank0.cancel_grace()


def test_a_refused_run_leaves_no_empty_time_stamped_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The time-stamped run directory is made when chosen; a run refused before it wrote anything (here an
    accelerator this machine lacks) removes it again ("a refused run leaves nothing")."""
    from entropyctl import cli

    runs = tmp_path / "runs"
    status = cli.main(["train", "--set", f"output_dir={runs}", "--set", "trainer.accelerator=cuda"])
    assert status == 2 and "cuda" in capsys.readouterr().err
    assert not list(runs.iterdir())


def test_a_resume_record_after_a_line_a_crash_cut_short(tmp_path: Path) -> None:
    """resumes.jsonl: the next record was appended onto a cut line, both were lost, and the previous good
    record was dropped as if it were the new one."""
    from entropyctl.trainer.run_dir import record_resume

    assert record_resume(tmp_path, {"step": 2}) == []
    with (tmp_path / "resumes.jsonl").open("a") as f:
        f.write('{"step": 3, "chan')  # a crash in the middle of a record
    assert [r["step"] for r in record_resume(tmp_path, {"step": 4})] == [2]
    assert [r["step"] for r in record_resume(tmp_path, {"step": 5})] == [2, 4]


def test_a_stop_before_the_first_checkpoint_gives_advice_that_works(tmp_path: Path) -> None:
    """Stopped before any checkpoint, the run said 'resume with --resume auto', which then finds no
    last.ckpt and is refused; it now says what works, and a stop after a checkpoint still says resume."""
    import lightning.pytorch as pl

    from entropyctl.trainer.run_dir import RunStopped

    class _StopAt(pl.Callback):
        def __init__(self, step: int) -> None:
            self.step = step

        def on_train_batch_end(self, trainer: Any, module: Any, *args: Any) -> None:
            if module.rlvr_step == self.step:
                raise RunStopped(15)

    for every, advice in ((5, "run it again with --overwrite"), (1, "resume with --resume auto")):
        lines: list[str] = []
        config = tiny_config("trainer.steps=3", f"trainer.checkpoint_every={every}", "eval.before=false")
        with pytest.raises(RunStopped):
            run_training(config, tmp_path / f"every{every}", callbacks=[_StopAt(2)], log=lines.append)
        assert any("stopped by signal 15 after step 2" in line and advice in line for line in lines), lines


def test_a_write_a_kill_cut_short_is_removed_when_the_run_goes_on(tmp_path: Path) -> None:
    """A SIGKILL during a checkpoint's write left checkpoints/.last.ckpt.<pid>.tmp for good (a model's
    size each time: write_atomic removes it only when the error reaches the process). The next run of
    the directory holds its lock, so every such file is stale and goes."""
    config = tiny_config(
        "trainer.steps=2", "trainer.checkpoint_every=1", "eval.before=false", "eval.after=false"
    )
    run_dir = tmp_path / "run"
    run_training(config, run_dir)
    stale = [run_dir / "checkpoints" / ".last.ckpt.999999.tmp", run_dir / ".summary.json.999999.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    keep = run_dir / "checkpoints" / "notes.tmp"  # not write_atomic's: left alone
    keep.write_text("mine")
    lines: list[str] = []
    run_training(tiny_config("trainer.steps=3", "trainer.checkpoint_every=1", "eval.before=false",
                             "eval.after=false"), run_dir, resume="auto", log=lines.append)  # fmt: skip
    assert not any(path.exists() for path in stale) and keep.exists()
    assert sum("an earlier process was killed in" in line for line in lines) == 2
