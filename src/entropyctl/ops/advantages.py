"""Group-relative advantages (design.md §2).

    A_ij = (r_ij − mean_j r_ij) / (std_j r_ij + ε)      scale="group"  (GRPO)
    A_ij =  r_ij − mean_j r_ij                          scale="none"   (Dr.GRPO: no std division)

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

from typing import Literal

import torch
from torch import Tensor

__all__ = ["group_advantages"]


def group_advantages(
    rewards: Tensor,
    scale: Literal["group", "none"] = "group",
    eps: float = 1e-6,
    *,
    unbiased: bool = True,
) -> Tensor:
    """Advantages ``[P, G]`` from rewards ``[P, G]`` (P prompts, G rollouts each); see module doc."""
    if rewards.dim() != 2:
        raise ValueError(
            f"rewards must be [P, G] (prompts × rollouts per prompt), got shape {tuple(rewards.shape)}"
        )
    if scale not in ("group", "none"):
        raise ValueError(f"scale must be 'group' or 'none', got {scale!r}")
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
    if scale == "none":
        return centered
    g = r.shape[1]
    if g == 1:
        return torch.zeros_like(centered)  # one rollout: no group statistics, no signal
    std = r.std(dim=1, keepdim=True, unbiased=unbiased)
    return centered / (std + eps)
