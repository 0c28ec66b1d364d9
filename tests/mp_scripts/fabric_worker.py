"""Two-process worker for tests/test_fabric_multiprocess.py (Lightning Fabric, DDP, gloo on CPU).

Run as ``python tests/mp_scripts/fabric_worker.py OUT_DIR`` with MASTER_ADDR/MASTER_PORT set;
``fabric.launch()`` re-runs this file for rank 1. Each rank writes ``OUT_DIR/rank<r>.json``.

Part A (statistics + controllers): for several steps each rank holds a DIFFERENT number of tokens
and a different difficulty mix (rank 1 holds none at all in one step); every step goes through
EntropyStats → reduce(fabric) → reading → controller.observe, counting torch.distributed.all_reduce
calls. Part B (DDP step): a tiny model wrapped by Fabric DDP, an uneven token split, the fused policy
loss normalised by the GLOBAL token count and scaled by W, one SGD step.

The data functions are deterministic from a seed and imported by the parent test to build the
single-process oracle, so they must not import lightning at module level.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

WORLD_SIZE = 2
STEPS = 6
EMPTY_STEP, EMPTY_RANK = 3, 1  # in this step rank 1 holds zero response tokens
LEVELS = (1, 2, 3, 4)
GROUP_SIZE = 8
CONTROLLERS: dict[str, dict[str, Any]] = {
    "aer": {"name": "aer", "anchor_steps": 2, "eta": 0.05, "alpha_0": 0.01, "alpha_min": 0.001, "tau": 0.6},
    "target": {"name": "target", "anchor_steps": 1, "eta": 0.05, "alpha_0": 0.01, "tau": 0.6},
}

# Part B shapes: rank 0 holds 37 token rows, rank 1 holds 11 (uneven on purpose).
DDP_SPLIT = (37, 11)
D_IN, D_HIDDEN, VOCAB = 8, 16, 50
TEMPERATURE = 0.7
LR = 0.5
CLIP_LOW, CLIP_HIGH = 0.2, 0.28


def stats_rank_data(step: int, rank: int) -> dict[str, torch.Tensor]:
    """One rank's response tokens for one step: rows = prompts (one group each), [B, T].

    Rank 0: many long rows of easy levels (1-2, low entropy); rank 1: few short rows of hard levels
    (3-4, high entropy). So the token-weighted global mean differs from the mean of rank means.
    """
    g = torch.Generator().manual_seed(1000 * step + rank)
    if rank == 0:
        b, t, lo, hi = 6, 48, 1, 2
    else:
        b, t, lo, hi = 2, 10, 3, 4
    level = torch.randint(lo, hi + 1, (b,), generator=g)
    lengths = torch.randint(t // 2, t + 1, (b,), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    if step == EMPTY_STEP and rank == EMPTY_RANK:
        mask = torch.zeros_like(mask)
    entropy = 0.4 * level[:, None].float() + 0.5 * torch.rand(b, t, generator=g)
    entropy = entropy.masked_fill(~mask, float("nan"))  # padding garbage must never leak
    # Group accuracy falls with the level: easy prompts are mostly solved.
    accuracy = (1.0 - 0.25 * level.float() + 0.125 * torch.randint(0, 2, (b,), generator=g)).clamp(0, 1)
    return {"entropy": entropy, "mask": mask, "level": level, "accuracy": accuracy}


def ddp_batch() -> dict[str, torch.Tensor]:
    """The full DDP batch (all ranks' token rows concatenated) and the initial model weights."""
    g = torch.Generator().manual_seed(7)
    n = sum(DDP_SPLIT)
    mask = torch.rand(n, generator=g) < 0.8
    return {
        "x": torch.randn(n, D_IN, generator=g),
        "targets": torch.randint(0, VOCAB, (n,), generator=g),
        "old_logprob": -torch.log(torch.tensor(float(VOCAB))) + 0.4 * torch.randn(n, generator=g),
        "advantages": torch.randn(n, generator=g),
        "coef": 0.05 * torch.rand(n, generator=g),
        "mask": mask,
        "level": torch.randint(1, 5, (n,), generator=g),
        "proj_weight": 0.5 * torch.randn(D_HIDDEN, D_IN, generator=g),
        "proj_bias": 0.1 * torch.randn(D_HIDDEN, generator=g),
        "head_weight": 0.5 * torch.randn(VOCAB, D_HIDDEN, generator=g),
    }


class TinyPolicy(torch.nn.Module):
    """hidden = tanh(x·Pᵀ + b); the LM head weight is used by the fused loss, outside forward,
    as a trainer does with ``model.lm_head.weight``."""

    def __init__(self, batch: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(D_IN, D_HIDDEN)
        self.head = torch.nn.Linear(D_HIDDEN, VOCAB, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(batch["proj_weight"])
            self.proj.bias.copy_(batch["proj_bias"])
            self.head.weight.copy_(batch["head_weight"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(x))


def _params(model: torch.nn.Module) -> dict[str, list[float]]:
    return {k: v.detach().reshape(-1).tolist() for k, v in model.state_dict().items()}


def main(out_dir: Path) -> None:
    torch.set_num_threads(1)
    import torch.distributed as dist
    from lightning.fabric import Fabric

    from entropyctl.controllers import GroupOutcome, create_controller
    from entropyctl.ops.losses import fused_policy_loss
    from entropyctl.trainer.stats import (
        EntropyStats,
        ddp_loss_scale,
        global_token_count,
    )

    fabric = Fabric(accelerator="cpu", devices=WORLD_SIZE, strategy="ddp")
    fabric.launch()
    rank = fabric.global_rank
    assert fabric.world_size == WORLD_SIZE and dist.get_backend() == "gloo"

    # Count the collectives that actually reach torch.distributed (Lightning's _sync_ddp calls
    # dist.barrier() and then dist.all_reduce(); we count both).
    counts = {"all_reduce": 0, "barrier": 0}
    real_all_reduce, real_barrier = dist.all_reduce, dist.barrier

    def counting_all_reduce(*args: Any, **kwargs: Any) -> Any:
        counts["all_reduce"] += 1
        return real_all_reduce(*args, **kwargs)

    def counting_barrier(*args: Any, **kwargs: Any) -> Any:
        counts["barrier"] += 1
        return real_barrier(*args, **kwargs)

    dist.all_reduce, dist.barrier = counting_all_reduce, counting_barrier  # type: ignore[assignment]

    # ---------------------------------------------------------------- Part A: statistics
    result: dict[str, Any] = {"rank": rank, "steps": []}
    controllers = {name: create_controller(cfg) for name, cfg in CONTROLLERS.items()}
    stats = EntropyStats(buckets=len(LEVELS))
    for step in range(STEPS):
        data = stats_rank_data(step, rank)
        outcome = GroupOutcome(accuracy=data["accuracy"], group_size=GROUP_SIZE, step=step)
        plans = {name: c.plan(outcome) for name, c in controllers.items()}
        before = dict(counts)
        collectives_before = stats.collectives
        # Two micro-batches per step (rows split), coef = the AER plan's α_i per prompt row.
        half = data["mask"].shape[0] // 2
        for rows in (slice(0, half), slice(half, None)):
            stats.add(
                data["entropy"][rows],
                data["mask"][rows],
                bucket=data["level"][rows],
                coef=plans["aer"].coef[rows],
            )
        # Alternate the two Fabric-side reducers: the Fabric itself and its (DDP) strategy.
        stats.reduce(fabric if step % 2 == 0 else fabric.strategy)
        reading = stats.reading(step)
        for c in controllers.values():
            c.observe(reading)
        result["steps"].append(
            {
                "mean_entropy": reading.mean_entropy,
                "tokens": reading.tokens,
                "local_tokens": int(data["mask"].sum()),
                "bucket_means": {str(k): v for k, v in stats.bucket_means().items()},
                "bucket_tokens": {str(k): v for k, v in stats.bucket_tokens().items()},
                "mean_coef": stats.mean_coef(),
                "bucket_coef_means": {str(k): v for k, v in stats.bucket_coef_means().items()},
                "all_reduce_calls": counts["all_reduce"] - before["all_reduce"],
                "barrier_calls": counts["barrier"] - before["barrier"],
                "stats_collectives": stats.collectives - collectives_before,
                "controller_state": {n: c.state_dict() for n, c in controllers.items()},
                "controller_metrics": {n: c.metrics() for n, c in controllers.items()},
            }
        )
        stats.reset()

    # ---------------------------------------------------------------- Part B: DDP step
    batch = ddp_batch()
    start = sum(DDP_SPLIT[:rank])
    mine = {k: v[start : start + DDP_SPLIT[rank]] for k, v in batch.items() if v.shape[0] == sum(DDP_SPLIT)}
    torch.manual_seed(0)
    model = TinyPolicy(batch)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    model, optimizer = fabric.setup(model, optimizer)

    # N = global response-token count (one all_reduce); the loss is (1/N) Σ_local, scaled by W
    # because DDP averages the gradients over the W ranks.
    n_global = global_token_count(mine["mask"].sum(), fabric)
    scale = ddp_loss_scale(fabric)
    hidden = model(mine["x"])
    out = fused_policy_loss(
        hidden,
        model.head.weight,
        mine["targets"],
        mine["old_logprob"],
        mine["advantages"],
        mine["coef"],
        mine["mask"],
        CLIP_LOW,
        CLIP_HIGH,
        TEMPERATURE,
        chunk_size=8,
        num_tokens=n_global,
    )
    fabric.backward(out.loss * scale)
    optimizer.step()
    optimizer.zero_grad()

    # The entropies the loss computed (initial model) → the global reading, for the oracle.
    ddp_stats = EntropyStats(buckets=len(LEVELS))
    ddp_stats.add(out.entropy, mine["mask"], bucket=mine["level"], coef=mine["coef"])
    ddp_stats.reduce(fabric)
    result["ddp"] = {
        "n_global": n_global,
        "loss_scale": scale,
        "local_loss": float(out.loss),
        "params": _params(model.module if hasattr(model, "module") else model),
        "reading": ddp_stats.reading(0).mean_entropy,
        "tokens": ddp_stats.reading(0).tokens,
        "bucket_means": {str(k): v for k, v in ddp_stats.bucket_means().items()},
    }

    path = out_dir / f"rank{rank}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, path)
    fabric.barrier()
    dist.destroy_process_group()  # not left to interpreter exit (see token_selection_worker.py)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
