"""Kill-and-resume: a run interrupted after step 3 and resumed from its step-2 checkpoint ends with the
same controller state, parameters and logged metrics as the uninterrupted run with the same seed."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from trainer_helpers import read_metrics, tiny_config

from entropyctl.trainer.run import parameter_checksum, run_training

TIMING = ("time_sync", "time_rollout", "time_reward", "time_update", "time_step")


class _Killed(RuntimeError):
    pass


class _KillAfter(pl.Callback):
    """Simulates a crash at the end of step ``step`` (after its metrics row, before its checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        if pl_module.rlvr_step == self.step:
            raise _Killed(f"killed after step {self.step}")


def _comparable(rows: list[dict[str, float]]) -> list[dict[str, Any]]:
    # NaN (a level absent from a step) compares equal to NaN here
    return [{k: ("nan" if math.isnan(v) else v) for k, v in row.items() if k not in TIMING} for row in rows]


def test_kill_and_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    # aer with a fast η so that the controller state changes every step; PPO mini-batches so that the
    # optimizer state and the old-log-prob path matter too.
    config = tiny_config(
        "trainer.steps=4",
        "trainer.checkpoint_every=2",
        "controller.update=additive",  # the first release's rule: alpha moves fast
        "controller.eta=0.5",
        "controller.tau=0.9",
        "algorithm.mini_batches=2",
        "eval.before=false",
        "eval.after=false",
        "trainer.completions_every=1",  # completions.jsonl, like metrics.csv, holds each step once
    )
    full = run_training(config, tmp_path / "full")

    killed_dir = tmp_path / "killed"
    with pytest.raises(_Killed):
        run_training(config, killed_dir, callbacks=[_KillAfter(3)])
    assert json.loads((killed_dir / "summary.json").read_text())["status"] == "failed"
    assert [r["step"] for r in read_metrics(killed_dir)] == [1, 2, 3]  # step 3 logged, not checkpointed

    resumed = run_training(config, killed_dir, resume="auto")

    assert resumed["status"] == "finished" and resumed["steps"] == 4
    assert resumed["controller_state"] == full["controller_state"]
    full_rows, resumed_rows = read_metrics(tmp_path / "full"), read_metrics(killed_dir)
    assert [r["step"] for r in resumed_rows] == [1, 2, 3, 4]  # the interrupted step 3 was redone once
    assert _comparable(resumed_rows) == _comparable(full_rows)
    completions = [(d / "completions.jsonl").read_text() for d in (tmp_path / "full", killed_dir)]
    assert completions[0] == completions[1] and '"step": 4' in completions[0]
    # the alpha trajectory actually moved, so equality above is not trivial
    assert len({r["alpha"] for r in full_rows}) > 1


@pytest.mark.parametrize(
    "schedule",
    [[], ["optim.schedule=cosine", "optim.warmup_steps=2", "optim.min_lr_ratio=0.1"]],
    ids=["constant", "warm-up and cosine"],
)
def test_resumed_parameters_equal_uninterrupted(tmp_path: Path, schedule: list[str]) -> None:
    """Bit for bit, the optimizer's settings written over the checkpoint's on a resume included (the same
    settings give the same rate, base · factor(step), as the scheduler computed it)."""
    import torch

    config = tiny_config(
        "trainer.steps=3", "trainer.checkpoint_every=1", "eval.before=false", "eval.after=false", *schedule
    )
    run_training(config, tmp_path / "full")
    with pytest.raises(_Killed):
        run_training(config, tmp_path / "cut", callbacks=[_KillAfter(2)])
    run_training(config, tmp_path / "cut", resume=str(tmp_path / "cut" / "checkpoints" / "step-000001.ckpt"))

    def params(run: str) -> dict[str, torch.Tensor]:
        state = torch.load(
            tmp_path / run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
        )
        assert "entropy_controller" in state and state["rlvr"]["step"] == 3
        return {k: v for k, v in state["state_dict"].items() if k.startswith("policy.")}

    a, b = params("full"), params("cut")
    assert [r["lr"] for r in read_metrics(tmp_path / "full")] == [
        r["lr"] for r in read_metrics(tmp_path / "cut")
    ]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)

    class _Holder(torch.nn.Module):
        def __init__(self, weights: dict[str, torch.Tensor]) -> None:
            super().__init__()
            for i, (_, v) in enumerate(sorted(weights.items())):
                self.register_buffer(f"w{i}", v)

    assert parameter_checksum(_Holder(a)) == parameter_checksum(_Holder(b))


def test_evaluations_of_a_continued_run_are_the_uninterrupted_runs(tmp_path: Path) -> None:
    """eval.every: the evaluation at a run's last step is left to the one after training, which no
    checkpoint holds. A 2-step run continued to 4 lost step 2's (summary evals ['after'] against the
    uninterrupted ['after', 'step_2']), and with eval.after off the last step had none at all. The
    continuation now makes it at its start — the same weights and seeds, so the same numbers."""
    quick = ["eval.every=2", "eval.before=false", "eval.n_prompts=4", "eval.n_samples=2", "eval.ks=[1]"]
    full = run_training(tiny_config(*quick, "trainer.steps=4"), tmp_path / "full")
    run_training(tiny_config(*quick, "trainer.steps=2"), tmp_path / "cont")
    cont = run_training(tiny_config(*quick, "trainer.steps=4"), tmp_path / "cont", resume="auto")
    assert sorted(full["evals"]) == sorted(cont["evals"]) == ["after", "step_2"]
    assert cont["evals"] == full["evals"]
    off = run_training(tiny_config(*quick, "trainer.steps=4", "eval.after=false"), tmp_path / "off")
    assert sorted(off["evals"]) == ["step_2", "step_4"]  # the last step's evaluation, with none after
    assert off["evals"]["step_2"] == full["evals"]["step_2"]


def test_parameter_checksum_reads_any_dtype() -> None:
    """The rank files of a multi-process run hold each rank's parameter checksum; it went through numpy,
    which has no bfloat16, so every multi-process bf16-true run ended with a TypeError after finishing."""
    layer = torch.nn.Linear(3, 2).to(torch.bfloat16)
    same = torch.nn.Linear(3, 2).to(torch.bfloat16)
    same.load_state_dict(layer.state_dict())
    assert parameter_checksum(layer) == parameter_checksum(same)
    with torch.no_grad():
        same.bias[0] += 1
    assert parameter_checksum(layer) != parameter_checksum(same)


def test_a_resume_never_splices_two_branches_of_a_run(tmp_path: Path) -> None:
    """Run to step 5 (checkpoints of steps 2, 4 and last = 5); continue from step 2, crash after step 3
    (before any save); `--resume auto` then found the first branch's last.ckpt (step 5) and went on from it:
    metrics.csv held steps 1-3 of the second branch, then 6 — rows missing, weights of the other branch.
    Now refused, naming the checkpoint the rows reach; resumed from it, the run is whole."""
    from entropyctl.trainer.run_dir import RunDirError

    run_dir = tmp_path / "run"
    config = tiny_config(
        "trainer.steps=6", "trainer.checkpoint_every=2", "eval.before=false", "eval.after=false"
    )
    with pytest.raises(_Killed):
        run_training(config, run_dir, callbacks=[_KillAfter(5)])
    step2 = run_dir / "checkpoints" / "step-000002.ckpt"
    with pytest.raises(_Killed):
        run_training(config, run_dir, resume=str(step2), callbacks=[_KillAfter(3)])
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3]
    with pytest.raises(
        RunDirError, match=r"a checkpoint of step 4, but .*metrics\.csv ends at step 3"
    ) as err:
        run_training(config, run_dir, resume="auto")
    assert f"--resume {step2}" in str(err.value)
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3]  # the refusal changed nothing
    summary = run_training(config, run_dir, resume=str(step2))
    assert summary["status"] == "finished"
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6]


def _second_branch_killed(run_dir: Path, first: Any, second: Any, kill_after: int) -> Path:
    """Run ``first`` to its end, continue from its step-2 checkpoint with ``second`` and kill that after
    step ``kill_after`` (before its next save); returns the step-2 checkpoint."""
    run_training(first, run_dir)
    step2 = run_dir / "checkpoints" / "step-000002.ckpt"
    with pytest.raises(_Killed):
        run_training(second, run_dir, resume=str(step2), callbacks=[_KillAfter(kill_after)])
    return step2


def test_a_first_branch_checkpoint_the_rows_reach_is_refused_too(tmp_path: Path) -> None:
    """The first branch ran to step 4 (last.ckpt = step 4); the second continued from step 2 and was
    killed after step 4, before its first save: the rows reach step 4, so `--resume auto` took the first
    branch's last.ckpt — the second branch's rows 3-4, the first branch's weights. Each checkpoint now
    records its run segment, and one written before a resume that saved nothing since is refused."""
    from entropyctl.trainer.run_dir import RunDirError

    run_dir = tmp_path / "run"
    quiet = ["eval.before=false", "eval.after=false"]
    first = tiny_config("trainer.steps=4", "trainer.checkpoint_every=2", *quiet)
    longer = tiny_config("trainer.steps=8", "trainer.checkpoint_every=5", *quiet)
    step2 = _second_branch_killed(run_dir, first, longer, 4)
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3, 4]
    with pytest.raises(RunDirError, match="written before this run was resumed from step 2") as err:
        run_training(longer, run_dir, resume="auto")
    assert str(err.value).endswith(f"--resume {step2}")
    summary = run_training(longer, run_dir, resume=str(step2))  # the advice works: a whole run
    assert summary["status"] == "finished" and [r["step"] for r in read_metrics(run_dir)] == list(range(1, 9))


def test_the_refusal_names_a_checkpoint_of_the_rows_own_branch(tmp_path: Path) -> None:
    """The first branch ran to step 6 (checkpoints 2, 4, 6); the second, from step 2 with checkpoints every
    5 steps, crashed after step 4: step-000004.ckpt is still the first branch's. The refusal named it
    (the latest step checkpoint the rows reach) — following it spliced the branches again; now it names
    one at or before the second branch's start."""
    from entropyctl.trainer.run_dir import RunDirError

    run_dir = tmp_path / "run"
    quiet = ["eval.before=false", "eval.after=false"]
    every5 = tiny_config("trainer.steps=6", "trainer.checkpoint_every=5", *quiet)
    step2 = _second_branch_killed(
        run_dir, tiny_config("trainer.steps=6", "trainer.checkpoint_every=2", *quiet), every5, 4
    )
    with pytest.raises(RunDirError, match="metrics.csv ends at step 4") as err:
        run_training(every5, run_dir, resume="auto")
    assert str(err.value).endswith(f"--resume {step2}")


def test_a_resume_whose_model_source_changed_is_refused_when_it_rebuilds_the_kl_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a KL the frozen reference is rebuilt from the model source on a resume: a warm-start cache
    whose weights changed (another machine's build) gave another reference silently (kl_loss at step 3
    0.0029 against 0.00065 in a review's check). The checkpoint records the starting weights' digest."""
    import shutil

    from safetensors.torch import load_file, save_file

    from entropyctl.models import warm_start
    from entropyctl.trainer.run_dir import ResumeMismatchError

    config = tiny_config(
        "trainer.steps=4", "trainer.checkpoint_every=2", "eval.before=false", "eval.after=false",
        "algorithm.kl_coef=0.5",
    )  # fmt: skip
    run_dir = tmp_path / "run"
    with pytest.raises(_Killed):
        run_training(config, run_dir, callbacks=[_KillAfter(3)])
    entry = warm_start.cached_checkpoint(config.model)
    moved = tmp_path / "cache" / entry.relative_to(warm_start.default_cache_dir())
    shutil.copytree(entry, moved)
    weights = load_file(moved / "model.safetensors")
    name = next(k for k in weights if k.endswith("norm.weight"))
    weights[name] = weights[name] + 0.05
    save_file(weights, moved / "model.safetensors", metadata={"format": "pt"})
    monkeypatch.setenv("ENTROPYCTL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ResumeMismatchError, match="KL reference, rebuilt from it, would be another one"):
        run_training(config, run_dir, resume="auto")
    summary = run_training(config, run_dir, resume="auto", allow_resume_changes=True)
    assert summary["status"] == "finished"


def test_a_resume_at_its_last_step_drops_the_rows_past_its_checkpoint(tmp_path: Path) -> None:
    """Killed after step 5 of 6 (checkpoint of step 4), resumed with trainer.steps=4: Lightning trains
    nothing then and skips the train start that trimmed the rows, so metrics.csv and completions.jsonl
    kept step 5 and summary.json's final entropy was step 5's."""
    run_dir = tmp_path / "run"
    quiet = [
        "eval.before=false",
        "eval.after=false",
        "trainer.checkpoint_every=2",
        "trainer.completions_every=1",
    ]
    with pytest.raises(_Killed):
        run_training(tiny_config("trainer.steps=6", *quiet), run_dir, callbacks=[_KillAfter(5)])
    summary = run_training(tiny_config("trainer.steps=4", *quiet), run_dir, resume="auto")
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert summary["final_entropy"] == rows[-1]["entropy"]
    logged = [json.loads(line)["step"] for line in (run_dir / "completions.jsonl").read_text().splitlines()]
    assert max(logged) == 4


def test_a_resume_that_failed_before_training_is_no_branch_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume from step 2 that failed while the policy was built (a damaged cache, Ctrl-C in the warm
    start) trained nothing and left the rows as they were, yet was recorded as a resume: the branch check
    then refused the run's own last.ckpt (step 4). A resume is recorded once it has taken effect."""
    from entropyctl.trainer import run as run_module

    config = tiny_config(
        "trainer.steps=4", "trainer.checkpoint_every=2", "eval.before=false", "eval.after=false"
    )
    run_dir = tmp_path / "run"
    run_training(config, run_dir)
    step2 = run_dir / "checkpoints" / "step-000002.ckpt"
    original = run_module.build_module

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("the cached warm start cannot be loaded")

    monkeypatch.setattr(run_module, "build_module", broken)
    with pytest.raises(OSError):
        run_training(config, run_dir, resume=str(step2))
    monkeypatch.setattr(run_module, "build_module", original)
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3, 4]
    longer = tiny_config(
        "trainer.steps=5", "trainer.checkpoint_every=2", "eval.before=false", "eval.after=false"
    )
    summary = run_training(longer, run_dir, resume="auto")
    assert summary["status"] == "finished" and [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3, 4, 5]
