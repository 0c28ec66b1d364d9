"""``trainer.completions_every``: a run writes step 1's and every N-th step's rollouts to
``completions.jsonl`` (rank 0), each row the prompt, the decoded completion, its rewards and advantage;
a resume drops the rows past its checkpoint, as it does metrics.csv's."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from trainer_helpers import read_metrics, tiny_config

from entropyctl.ops.advantages import group_advantages
from entropyctl.trainer.run import run_training
from entropyctl.trainer.run_dir import CompletionsWriter

QUIET = ["eval.before=false", "eval.after=false", "trainer.save_last=false"]


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "completions.jsonl").read_text().splitlines()]


def test_a_run_writes_its_rollouts_every_n_steps(tmp_path: Path) -> None:
    config = tiny_config("trainer.steps=4", "trainer.completions_every=2", *QUIET)
    run_training(config, tmp_path)
    rows = _rows(tmp_path)
    P, G = config.rollout.prompts_per_step, config.rollout.group_size
    assert [r["step"] for r in rows] == [1] * (P * G) + [2] * (P * G) + [4] * (P * G)
    metrics = {int(m["step"]): m for m in read_metrics(tmp_path)}
    for step in (1, 2, 4):
        mine = [r for r in rows if r["step"] == step]
        rewards = torch.tensor([r["shaped_reward"] for r in mine]).reshape(P, G)
        # the advantage each row carries is its group's, from the rewards it lists
        expected = group_advantages(rewards).reshape(-1)
        assert torch.allclose(torch.tensor([r["advantage"] for r in mine]), expected, atol=1e-5)
        assert sum(r["reward"] for r in mine) / (P * G) == metrics[step]["accuracy"]  # a 0/1 verifier
        assert sum(r["length"] for r in mine) / (P * G) == metrics[step]["response_length"]
        assert all(r["prompt"] and isinstance(r["completion"], str) and r["answer"] for r in mine)
        assert [r["group"] for r in mine] == [i for i in range(P) for _ in range(G)]


def test_off_by_default_and_truncated_on_resume(tmp_path: Path) -> None:
    run_training(tiny_config("trainer.steps=1", *QUIET), tmp_path / "off")
    assert not (tmp_path / "off" / "completions.jsonl").exists()
    writer = CompletionsWriter(tmp_path / "completions.jsonl")
    writer.write([{"completion": f"é{s}", "step": s} for s in (1, 2, 3, 3)])
    writer.truncate_after(2)  # a resume from step 2's checkpoint
    assert [r["step"] for r in _rows(tmp_path)] == [1, 2] and _rows(tmp_path)[0]["completion"] == "é1"
    # a write a kill cut short leaves half a line: the resume drops it rather than failing on it
    writer.write([{"step": 3, "completion": "x" * 50}])
    path = tmp_path / "completions.jsonl"
    path.write_bytes(path.read_bytes()[:-20])
    writer.truncate_after(3)
    assert [r["step"] for r in _rows(tmp_path)] == [1, 2]


def test_a_resume_that_writes_none_still_drops_the_rows_past_its_checkpoint(tmp_path: Path) -> None:
    config = tiny_config(
        "trainer.steps=3", "trainer.checkpoint_every=2", "trainer.completions_every=1", *QUIET
    )
    run_training(config, tmp_path)
    assert {r["step"] for r in _rows(tmp_path)} == {1, 2, 3}
    off = tiny_config("trainer.steps=3", "trainer.checkpoint_every=2", *QUIET)
    run_training(off, tmp_path, resume=str(tmp_path / "checkpoints" / "step-000002.ckpt"))
    assert {r["step"] for r in _rows(tmp_path)} == {1, 2}  # step 3 was redone, and not written
