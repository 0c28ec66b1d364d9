"""`entropyctl train` with 2 CPU processes (Lightning ddp, gloo): each rank rolls out its own prompts, the
entropy reading is the exact token-weighted global one, and both ranks end with identical controller
state and parameters — with LoRA adapters, gradient checkpointing, micro-batches and a per-response loss
on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from multiprocess_launch import run_train_cli
from trainer_helpers import SMALL, TINY, read_metrics


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_process_ddp_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    overrides = [
        *TINY,
        *SMALL,
        "trainer.devices=2",
        "trainer.steps=3",
        "controller.update=additive",  # the first release's rule: alpha moves fast
        "controller.eta=0.5",
        "controller.tau=0.9",
        "algorithm.mini_batches=2",
        "eval.n_prompts=6",
        "algorithm.skip_no_signal=true",  # its collective (is there a signal on any rank?) runs every step
        # the options for larger policies, together: LoRA adapters (frozen base weights under DDP), each
        # layer recomputed in backward, GRPO's per-response loss (its response count all-reduced)
        "model.lora.r=4",
        "model.gradient_checkpointing=true",
        "algorithm.loss_agg=seq-mean-token-mean",
        # each mini-batch of 12 responses in micro-batches of 5, 5 and 2: DDP's all-reduce skipped on the
        # first two backwards (no_sync), the third's sums all three (the ranks' weights stay equal)
        "algorithm.micro_batch_size=5",
        "algorithm.kl_coef=0.1",  # the KL reference of a LoRA run: the policy with its adapters off
        "data.levels=[1]",  # one-digit sums: the tiny model solves some, so steps carry a signal to train on
    ]
    run_train_cli(run_dir, overrides, timeout_s=600)

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == 2
    ranks = [json.loads((run_dir / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["parameter_sha256"] == ranks[1]["parameter_sha256"]
    assert ranks[0]["controller_state"] == ranks[1]["controller_state"] == summary["controller_state"]

    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for step, row in enumerate(rows):
        local = [ranks[r]["local_steps"][step] for r in (0, 1)]
        assert local[0]["prompts"] != local[1]["prompts"]  # each rank samples its own prompts
        tokens = local[0]["tokens"] + local[1]["tokens"]
        exact = (local[0]["entropy_sum"] + local[1]["entropy_sum"]) / tokens
        assert row["tokens"] == tokens and local[0]["global_tokens"] == local[1]["global_tokens"] == tokens
        assert row["entropy"] == pytest.approx(exact, rel=1e-12)
        assert local[0]["global_entropy"] == local[1]["global_entropy"] == row["entropy"]
        assert row["reward"] >= 0.0
    assert len({r["alpha"] for r in rows}) > 1  # the controller moved, identically on both ranks
    # the adapters trained (a skipped step logs a zero norm), away from the base model the KL reads
    assert any(r["grad_norm"] > 0 for r in rows) and rows[-1]["kl_loss"] > 0.0
