"""Small run configs for the trainer tests (a tiny model whose warm start takes seconds)."""

from __future__ import annotations

import csv
import math
import subprocess
import time
from pathlib import Path
from typing import Any

from entropyctl.config import RunConfig, load_run_config

#: A 1-layer, 32-wide char model warm-started for 60 steps: seconds on 2 cores, cached after the first use.
TINY = [
    "model.tiny.hidden_size=32",
    "model.tiny.layers=1",
    "model.tiny.heads=2",
    "model.pretrain.steps=60",
    "model.pretrain.batch_size=32",
    "model.pretrain.warmup_steps=5",
]

#: A few prompts per step, a short eval, no progress bar / TensorBoard; the RL shape the trainer tests
#: were written for (all five levels, one PPO epoch, no lr warm-up: the embedded default before
#: 2026-12-03), pinned so that they do not follow the main job's settings.
SMALL = [
    "data.levels=[1,2,3,4,5]",
    "algorithm.ppo_epochs=1",
    "optim.warmup_steps=0",
    "trainer.checkpoint_every=40",
    "rollout.prompts_per_step=6",
    "rollout.group_size=4",
    "rollout.max_new_tokens=6",
    "eval.n_prompts=5",
    "eval.n_samples=2",
    "eval.ks=[1,2]",
    "trainer.progress_bar=false",
    "trainer.tensorboard=false",
    "optim.lr=1e-3",
]


#: One step with no evaluation or checkpoint and no entropy bonus (α = 0: the loss is the policy-gradient term
#: alone), where the step carries a signal: the barely trained tiny model solves nothing, so a response is
#: scored by whether it sorts before the answer (a plain string comparison), which mixes a group's rewards.
SIGNAL_STEP = [
    "trainer.steps=1",
    "eval.before=false",
    "eval.after=false",
    "trainer.save_last=false",
    "controller.name=fixed",
    "controller.alpha=0.0",
    "reward.name=operator:lt",
]


def tiny_config(*overrides: str) -> RunConfig:
    return load_run_config(None, [*TINY, *SMALL, *overrides])


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    with (Path(run_dir) / "metrics.csv").open(newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def is_finite(value: float) -> bool:
    return math.isfinite(value)


def wait_rows(run_dir: Path, rows: int, proc: subprocess.Popen[str], limit: float = 240.0) -> None:
    """Wait until ``run_dir/metrics.csv`` holds ``rows`` rows while ``proc`` (the run, or the command
    that launched it) is alive; fail with its output when it ends first or the wait runs past ``limit``."""
    deadline = time.monotonic() + limit
    path = run_dir / "metrics.csv"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(
                f"the run ended early (rc {proc.returncode}): {((out or '') + (err or ''))[-2000:]}"
            )
        if path.exists() and len(path.read_text().splitlines()) - 1 >= rows:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {rows} metrics rows within {limit} s")


# A tiny run takes ~0.04 s a step: a signal sent once some rows are logged could land after the last
# step. This reward (exact match) sleeps, so a step lasts >= (prompts x group) x 0.05 s and the signal
# lands mid-run with seconds to spare; it changes no metric but the timings. Write it to
# ``paced_reward_mod.py`` on the run's PYTHONPATH and select it with PACED (``--set`` items) or
# PACED_REWARD_NAME (``reward.name``).
PACED_REWARD = """
import time

def paced(completion, answer):
    time.sleep(0.05)
    return float(completion.strip() == str(answer).strip())
"""
PACED_REWARD_NAME = "paced_reward_mod:paced"
PACED = [f"reward.name={PACED_REWARD_NAME}"]
