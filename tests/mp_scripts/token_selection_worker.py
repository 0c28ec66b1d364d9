"""Two-process worker for tests/test_token_level_multiprocess.py (Lightning Fabric, gloo on CPU).

Run as ``python tests/mp_scripts/token_selection_worker.py OUT_DIR`` with MASTER_ADDR/MASTER_PORT
set; ``fabric.launch()`` re-runs this file for rank 1. Each rank writes ``OUT_DIR/rank<r>.json``.

For several steps each rank holds a DIFFERENT number of tokens (rank 1 none at all in one step,
entropy ties across ranks in another); every token-level controller computes its token action
through ``TokenCollective(rank, W, fabric.all_gather)``, counting ``torch.distributed.all_gather``
calls, and the policy loss with that action (normalised by the GLOBAL token count). The parent
test compares the concatenated per-rank selections and the sum of the per-rank losses with one
process on the concatenated tokens.

The data functions are deterministic from a seed and imported by the parent test to build the
single-process oracle, so they must not import lightning at module level.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

WORLD_SIZE = 2
STEPS = 4
EMPTY_STEP, EMPTY_RANK = 2, 1  # in this step rank 1 holds zero tokens
TIE_STEP = 3  # in this step entropies are rounded to 0.1: ties across ranks at the top-k boundary
CONTROLLERS: dict[str, dict[str, Any]] = {
    # Band and ratios chosen so that each selection picks several tokens out of ~300.
    "clip_cov": {"name": "clip_cov", "ratio": 0.02, "cov_lower": 0.05, "cov_upper": 2.0, "seed": 7},
    "kl_cov": {"name": "kl_cov", "ratio": 0.03, "kl_coef": 1.0},
    "high_entropy_tokens": {"name": "high_entropy_tokens", "fraction": 0.2},
}


def rank_tokens(step: int, rank: int) -> dict[str, torch.Tensor]:
    """One rank's tokens of one step (fp64, [n]): rank 0 holds ~3x rank 1's tokens."""
    g = torch.Generator().manual_seed(100 * step + rank)
    n = (240 if rank == 0 else 75) + 7 * step
    if step == EMPTY_STEP and rank == EMPTY_RANK:
        n = 0
    old = -torch.rand(n, generator=g, dtype=torch.float64) * 3.0
    logprob = old + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    entropy = torch.rand(n, generator=g, dtype=torch.float64) * (2.0 if rank == 0 else 3.0)
    if step == TIE_STEP:
        entropy = torch.round(entropy * 10.0) / 10.0
    advantages = torch.randn(n, generator=g, dtype=torch.float64)
    mask = (torch.rand(n, generator=g) > 0.1).to(torch.float64)
    return {
        "logprob": logprob,
        "old_logprob": old,
        "entropy": entropy,
        "advantages": advantages,
        "mask": mask,
    }


def main(out_dir: Path) -> None:
    import torch.distributed as dist
    from lightning.fabric import Fabric

    from entropyctl import create_controller
    from entropyctl.controllers.base import TokenCollective, TokenStatistics
    from entropyctl.ops.losses import policy_loss

    fabric = Fabric(accelerator="cpu", devices=WORLD_SIZE, strategy="ddp")
    fabric.launch()
    rank = fabric.global_rank
    calls = {"all_gather": 0}
    original = dist.all_gather

    def counting_all_gather(*args: Any, **kwargs: Any) -> Any:
        calls["all_gather"] += 1
        return original(*args, **kwargs)

    dist.all_gather = counting_all_gather  # type: ignore[assignment]
    collective = TokenCollective(rank=rank, world_size=fabric.world_size, all_gather=fabric.all_gather)
    result: dict[str, Any] = {"rank": rank, "steps": []}
    for step in range(1, STEPS + 1):
        data = rank_tokens(step, rank)
        global_tokens = fabric.all_reduce(data["mask"].sum().reshape(1), reduce_op="sum")
        record: dict[str, Any] = {"step": step, "n": int(data["mask"].numel())}
        for name, config in CONTROLLERS.items():
            controller = create_controller(config)
            stats = TokenStatistics(step=step, **data)
            before = calls["all_gather"]
            action = controller.token_action(stats, collective)
            gathers = calls["all_gather"] - before
            bounds = controller.clip_bounds()  # type: ignore[attr-defined]
            selected = action.selected()
            out = policy_loss(
                data["logprob"],
                data["entropy"],
                data["old_logprob"],
                data["advantages"],
                0.0,
                data["mask"],
                bounds[0],
                bounds[1],
                num_tokens=float(global_tokens),
                token_action=action,
            )
            record[name] = {
                "selected": [] if selected is None else selected.tolist(),
                "gathers": gathers,
                "loss": float(out.loss),
            }
        result["steps"].append(record)
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result))
    # both ranks done before either tears gloo down; a process group left to interpreter exit can abort
    # one rank ("terminate called without an active exception", seen once under load)
    fabric.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
