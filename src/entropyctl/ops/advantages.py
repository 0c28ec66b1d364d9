"""Group-relative advantages (design.md §2).

    A_ij = (r_ij − b_ij) / (std_j r_ij + ε)      scale="group"  (GRPO)
    A_ij = (r_ij − b_ij) / (std_batch + ε)       scale="batch"  (TRL's scale_rewards="batch": one std of
                                                                 every reward of the step's global batch)
    A_ij =  r_ij − b_ij                          scale="none"   (Dr.GRPO: no std division)

    b_ij = mean_j r_ij                           baseline="mean"           (GRPO)
    b_ij = mean_{k ≠ j} r_ik                     baseline="leave-one-out"  (RLOO: the other G − 1 rollouts;
                                                 r_ij − b_ij = G/(G − 1)·(r_ij − mean_j r_ij))

GRPO is mean + group, Dr.GRPO mean + none, RLOO leave-one-out + none (verl's ``rloo``), REINFORCE++
with a group baseline mean + batch (our reading of verl's ``reinforce_plus_plus_baseline``, which then
whitens over the batch's tokens — subtracting their mean again, dividing by their std — rather than
dividing by the std of its rewards).

Which std: the *unbiased* sample std (Bessel, divide by G − 1), i.e. ``torch.std``'s default. That
is what the common GRPO implementations use: TRL's ``GRPOTrainer``
(``rewards.view(-1, num_generations).std(dim=1)``) and verl's ``compute_grpo_outcome_advantage``
(``torch.std`` over a group's scores), both with torch's default ``unbiased=True``. Pass
``unbiased=False`` for the population std (divide by G), as some re-implementations (NumPy's
``np.std`` default) do; with G = 8 the two differ by a factor √(8/7) ≈ 1.07 in |A|.
(verl gives a 1-rollout group mean 0 and std 1, i.e. A = r; here such a group gets A = 0.)

A group whose rewards are all equal (all correct or all wrong) carries no signal: its advantages
are exactly 0 (never NaN, never ±ε-noise), so its policy-gradient term vanishes.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

__all__ = ["batch_reward_std", "group_advantages", "reward_sums"]


def group_advantages(
    rewards: Tensor,
    scale: Literal["group", "batch", "none"] = "group",
    eps: float = 1e-6,
    *,
    unbiased: bool = True,
    baseline: Literal["mean", "leave-one-out"] = "mean",
    batch_std: float | None = None,
) -> Tensor:
    """Advantages ``[P, G]`` from rewards ``[P, G]`` (P prompts, G rollouts each); see module doc.

    ``batch_std`` (scale="batch"): the std of the global batch's rewards, when the batch spans processes
    (:func:`batch_reward_std` of their sums); None: the std of ``rewards`` themselves."""
    if rewards.dim() != 2:
        raise ValueError(
            f"rewards must be [P, G] (prompts × rollouts per prompt), got shape {tuple(rewards.shape)}"
        )
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    if baseline not in ("mean", "leave-one-out"):
        raise ValueError(f"baseline must be 'mean' or 'leave-one-out', got {baseline!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    r = rewards.to(torch.float64) if rewards.dtype == torch.float64 else rewards.float()
    if r.numel() and not bool(torch.isfinite(r).all()):
        raise ValueError("rewards contain NaN or inf")
    if r.numel() == 0:
        return r.clone()
    centered = r - r.mean(dim=1, keepdim=True)
    # All-equal groups → exactly 0 (the mean of equal floats may differ from them by one ulp).
    constant = r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True)
    centered = torch.where(constant, torch.zeros_like(centered), centered)
    g = r.shape[1]
    if g == 1:
        return torch.zeros_like(centered)  # one rollout: no group statistics, no signal
    if baseline == "leave-one-out":
        centered = centered * (g / (g - 1))
    if scale == "none":
        return centered
    if scale == "batch":
        if batch_std is None:
            std = float(r.reshape(-1).std(unbiased=unbiased)) if r.numel() > 1 else 0.0
        else:
            std = float(batch_std)
        if not math.isfinite(std) or std < 0:
            raise ValueError(f"batch_std must be a finite value >= 0, got {batch_std!r}")
        # std + eps = 0 only when eps = 0 and every reward is equal: every group constant, all zeros already
        return centered / (std + eps) if std + eps > 0 else centered
    std_g = r.std(dim=1, keepdim=True, unbiased=unbiased)
    # a constant group keeps its exact 0 when eps = 0 (0 / 0 would be NaN)
    return torch.where(constant, centered, centered / (std_g + eps))


def reward_sums(rewards: Tensor, shift: float = 0.0) -> tuple[float, float, float]:
    """(count, Σ (r − shift), Σ (r − shift)²) in float64: one process's share of the batch std. Sum them over
    processes, then :func:`batch_reward_std`. ``shift`` (the same on every process, e.g. the global mean
    from a first pass) keeps the squares from cancelling when the rewards sit far from 0."""
    d = rewards.detach().to(torch.float64).reshape(-1) - shift
    return float(d.numel()), float(d.sum()), float((d * d).sum())


def batch_reward_std(count: float, total: float, squares: float, *, unbiased: bool = True) -> float:
    """The std of a batch's rewards from :func:`reward_sums` (summed over processes); 0 below two rewards."""
    dof = count - 1 if unbiased else count
    if count < 2 or dof <= 0:
        return 0.0
    return math.sqrt(max(squares - total * total / count, 0.0) / dof)
