"""data.order: epochs — passes over the training rows in a fresh seeded shuffle per epoch, each row once an
epoch, the ranks on disjoint rows, and the same rows for a resumed run (the sampler holds no stream)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from trainer_helpers import read_metrics, tiny_config

from entropyctl.config import ConfigError, load_run_config
from entropyctl.data.synthetic import Problem
from entropyctl.trainer.run import run_training
from entropyctl.trainer.sampler import PromptSampler

ROWS = [Problem(prompt=f"q{i}", answer=str(i)) for i in range(12)]


def _read(sampler: PromptSampler, steps: range, count: int, world: int) -> list[list[str]]:
    return [
        [p.prompt for p in sampler.sample(count, step=s, rank=r, world=world)]
        for s in steps
        for r in range(world)
    ]


def test_each_epoch_reads_every_row_once_on_disjoint_ranks() -> None:
    sampler = PromptSampler.from_list(ROWS, seed=3, order="epochs")
    batches = _read(sampler, range(1, 5), count=3, world=2)  # 2 steps × 2 ranks × 3 = one epoch of 12
    first, second = batches[:4], batches[4:]
    assert sorted(p for b in first for p in b) == sorted(p.prompt for p in ROWS)
    assert sorted(p for b in second for p in b) == sorted(p.prompt for p in ROWS)
    assert [p for b in first for p in b] != [p for b in second for p in b]  # a fresh shuffle each epoch
    # stateless: a step read alone (a resumed run's first) is the same as read in sequence
    again = PromptSampler.from_list(ROWS, seed=3, order="epochs")
    assert [p.prompt for p in again.sample(3, step=4, rank=1, world=2)] == batches[7]
    assert sampler.epoch_of(4, 3, 2) == 2.0
    # another seed, another order; the random order draws rows again within the epoch's span
    other = _read(PromptSampler.from_list(ROWS, seed=4, order="epochs"), range(1, 3), 3, 2)
    assert other != first
    drawn = [p for b in _read(PromptSampler.from_list(ROWS, seed=3), range(1, 3), 3, 2) for p in b]
    assert len(set(drawn)) < len(drawn)  # with replacement across steps (this seed repeats a row)
    with pytest.raises(ValueError, match="order must be"):
        PromptSampler.from_list(ROWS, seed=3, order="sorted")


def test_a_run_reads_the_rows_in_epochs(tmp_path: Path) -> None:
    rows = [{"question": f"{a}+{b}=", "answer": str(a + b)} for a in range(4) for b in range(4)]
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tiny_config(
        "data.source=file",
        f"data.path={data}",
        "data.order=epochs",
        "eval.n_prompts=4",  # 12 training rows, 6 prompts a step: an epoch in 2 steps
        "trainer.steps=3",
        "eval.before=false",
        "eval.after=false",
        "trainer.completions_every=1",
    )
    run_training(config, tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "completions.jsonl").read_text().splitlines()]
    per_step = {s: {row["prompt"] for row in lines if row["step"] == s} for s in (1, 2, 3)}
    assert len(per_step[1] | per_step[2]) == 12 and not per_step[1] & per_step[2]  # one epoch, each row once
    assert [r["data_epoch"] for r in read_metrics(tmp_path / "run")] == [0.5, 1.0, 1.5]


def test_epochs_are_for_a_file_and_random_logs_no_epoch() -> None:
    with pytest.raises(ConfigError, match=r"data\.order=epochs: epochs are passes over a file's rows"):
        load_run_config(None, ["data.order=epochs"])
    assert math.isnan(PromptSampler.from_list(ROWS, seed=0).epoch_of(3, 2))
