"""entropyctl's GRPOTrainer in two real processes: ``accelerate launch`` on CPU (gloo), one launch.

tests/mp_scripts/trl_worker.py trains 3 optimizer steps of 2 micro-batches on each rank with `aer` and
writes, per rank, every micro-batch's local ``Σ H·m`` and ``Σ m`` (from TRL's own entropies) and every
step's reading and controller state. Checked here:
- both ranks hold the same controller state and the same plan after every step;
- each step's reading is the token-weighted mean over the concatenated data of both ranks and both
  micro-batches (what one process would compute on all of it), not a mean of per-rank means.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from multiprocess_launch import free_port

SCRIPT = Path(__file__).parent / "mp_scripts" / "trl_worker.py"
TIMEOUT_S = 300
# ~20 s alone on 2 cores (two processes import TRL), more on a loaded machine.
pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("trl_mp")
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which(
        "accelerate"
    )
    assert accelerate is not None, "the accelerate CLI is missing (it comes with trl)"
    # --multi_gpu selects accelerate's torchrun launcher; with no GPU each process runs on CPU over gloo.
    command = [
        accelerate,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(SCRIPT),
        str(out),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def test_two_gloo_ranks_ran(ranks: list[dict[str, Any]]) -> None:
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == 2 and r["backend"] == "gloo" for r in ranks)
    assert all(len(r["steps"]) == 3 and len(r["micro_batches"]) == 6 for r in ranks)


def test_both_ranks_hold_the_same_controller_every_step(ranks: list[dict[str, Any]]) -> None:
    for a, b in zip(ranks[0]["steps"], ranks[1]["steps"], strict=True):
        assert a["state"] == b["state"]
        assert a["coef"] == b["coef"]
        assert (a["mean_entropy"], a["tokens"]) == (b["mean_entropy"], b["tokens"])
    assert ranks[0]["steps"][-1]["state"]["steps_observed"] == 3


def test_reading_is_the_global_token_weighted_mean(ranks: list[dict[str, Any]]) -> None:
    accumulation = ranks[0]["gradient_accumulation_steps"]
    unequal_ranks = False
    for step, record in enumerate(ranks[0]["steps"]):
        window = slice(accumulation * step, accumulation * (step + 1))
        per_rank = [r["micro_batches"][window] for r in ranks]
        sums = [sum(s for s, _ in mb) for mb in per_rank]
        tokens = [sum(n for _, n in mb) for mb in per_rank]
        assert record["tokens"] == sum(tokens)
        # fp32 entropies (≤ log 16 nats) summed over ≤ 6 tokens per row: relative error well under 1e-6
        assert record["mean_entropy"] == pytest.approx(sum(sums) / sum(tokens), rel=1e-6)
        if tokens[0] != tokens[1]:
            unequal_ranks = True
            mean_of_means = (sums[0] / tokens[0] + sums[1] / tokens[1]) / 2
            assert record["mean_entropy"] != mean_of_means
    assert unequal_ranks  # the ranks held different token counts, so the weighting was exercised
