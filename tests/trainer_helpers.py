"""Small run configs for the trainer tests (a tiny model whose warm start takes seconds)."""

from __future__ import annotations

import csv
import math
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

#: A few prompts per step, a short eval, no progress bar / TensorBoard.
SMALL = [
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


def tiny_config(*overrides: str) -> RunConfig:
    return load_run_config(None, [*TINY, *SMALL, *overrides])


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    with (Path(run_dir) / "metrics.csv").open(newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def is_finite(value: float) -> bool:
    return math.isfinite(value)
