"""optim.schedule: the learning rate after warm-up, constant (as before) or decaying to min_lr_ratio·lr."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from trainer_helpers import read_metrics, tiny_config

from entropyctl.trainer.module import lr_factor
from entropyctl.trainer.run import run_training


def test_constant_is_the_warm_up_then_one_as_before() -> None:
    before = lambda s: min(1.0, (s + 1) / 10)  # noqa: E731 - the rule every committed run used
    assert [lr_factor(10, "constant", 0.0, 100)(s) for s in range(100)] == [before(s) for s in range(100)]
    assert [lr_factor(0, "constant", 0.0, 5)(s) for s in range(5)] == [1.0] * 5


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_decays_from_the_end_of_warm_up_to_the_floor_at_the_last_step(schedule: str) -> None:
    factor = lr_factor(4, schedule, 0.1, 24)
    values = [factor(s) for s in range(24)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0] and values[4] == 1.0
    assert values[-1] == pytest.approx(0.1) and factor(30) == pytest.approx(0.1)  # past the end: the floor
    assert all(a >= b for a, b in zip(values[4:], values[5:], strict=False))  # never rises after warm-up
    if schedule == "linear":
        assert values[13] == pytest.approx(0.1 + 0.9 * (1 - 9 / 19))
    else:
        assert values[13] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 9 / 19)))


def test_a_run_logs_the_decayed_rate(tmp_path: Path) -> None:
    """The `lr` column is the rate after the step's scheduler step (the next step's): with a linear
    decay over 3 steps of one optimizer step each, 1e-3 → 0.5e-3 → 0 (min_lr_ratio 0)."""
    config = tiny_config(
        "trainer.steps=3", "eval.before=false", "eval.after=false", "optim.lr=1e-3", "optim.schedule=linear"
    )
    assert config.algorithm.updates_per_batch == 1 and config.optim.warmup_steps == 0
    run_training(config, tmp_path / "run")
    assert [row["lr"] for row in read_metrics(tmp_path / "run")] == pytest.approx([5e-4, 0.0, 0.0])
