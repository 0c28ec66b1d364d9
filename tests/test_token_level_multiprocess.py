"""Exact GLOBAL token selection over 2 processes (gloo): the union of the per-rank selections equals
the single-process selection on the concatenated tokens, for every token-level controller, with
uneven token counts, a rank holding no tokens and ties at the top-k boundary across ranks; the sum of
the per-rank losses equals the single-process loss. One launch of tests/mp_scripts/token_selection_worker.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from entropyctl import create_controller
from entropyctl.controllers.base import TokenStatistics
from entropyctl.ops.losses import policy_loss
from entropyctl.ops.token_selection import LOCAL

sys.path.insert(0, str(Path(__file__).parent / "mp_scripts"))
import token_selection_worker as worker  # noqa: E402
from multiprocess_launch import run_two_rank_script  # noqa: E402

SCRIPT = Path(__file__).parent / "mp_scripts" / "token_selection_worker.py"
TIMEOUT_S = 240
pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("token_mp")
    run_two_rank_script(SCRIPT, out, TIMEOUT_S)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(worker.WORLD_SIZE)]


def _single_process(step: int, name: str) -> tuple[list[bool], float]:
    parts = [worker.rank_tokens(step, r) for r in range(worker.WORLD_SIZE)]
    data = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    controller = create_controller(worker.CONTROLLERS[name])
    action = controller.token_action(TokenStatistics(step=step, **data), LOCAL)
    low, high = controller.clip_bounds()  # type: ignore[attr-defined]
    out = policy_loss(
        data["logprob"],
        data["entropy"],
        data["old_logprob"],
        data["advantages"],
        0.0,
        data["mask"],
        low,
        high,
        token_action=action,
    )
    selected = action.selected()
    assert selected is not None
    return selected.tolist(), float(out.loss)


@pytest.mark.parametrize("name", sorted(worker.CONTROLLERS))
def test_union_of_rank_selections_is_the_single_process_selection(
    ranks: list[dict[str, Any]], name: str
) -> None:
    for s in range(worker.STEPS):
        step = ranks[0]["steps"][s]["step"]
        union = ranks[0]["steps"][s][name]["selected"] + ranks[1]["steps"][s][name]["selected"]
        expected, _ = _single_process(step, name)
        assert len(union) == len(expected)
        assert union == expected, f"step {step}: the 2-process selection differs from one process"
        assert 0 < sum(expected) < len(expected)  # a real selection, not all or nothing


@pytest.mark.parametrize("name", sorted(worker.CONTROLLERS))
def test_sum_of_rank_losses_is_the_single_process_loss(ranks: list[dict[str, Any]], name: str) -> None:
    for s in range(worker.STEPS):
        step = ranks[0]["steps"][s]["step"]
        total = sum(r["steps"][s][name]["loss"] for r in ranks)
        _, expected = _single_process(step, name)
        # fp64 sums of ~300 terms of size ≤ ~10, split differently over the two ranks
        assert total == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_ties_cross_the_rank_boundary_in_the_tie_step() -> None:
    # guards the tie case of the test above: the k-th largest entropy is shared by tokens of both ranks
    parts = [worker.rank_tokens(worker.TIE_STEP, r) for r in range(worker.WORLD_SIZE)]
    entropy = torch.cat([p["entropy"] for p in parts])
    mask = torch.cat([p["mask"] for p in parts]) != 0
    k = max(1, int(worker.CONTROLLERS["high_entropy_tokens"]["fraction"] * int(mask.sum())))
    kth = torch.sort(entropy[mask], descending=True).values[k - 1]
    n0 = parts[0]["entropy"].numel()
    on_rank = [
        bool(((entropy[:n0] == kth) & mask[:n0]).any()),
        bool(((entropy[n0:] == kth) & mask[n0:]).any()),
    ]
    assert all(on_rank)


def test_two_all_gathers_per_selection(ranks: list[dict[str, Any]]) -> None:
    for rank in ranks:
        for record in rank["steps"]:
            for name in worker.CONTROLLERS:
                assert record[name]["gathers"] == 2
