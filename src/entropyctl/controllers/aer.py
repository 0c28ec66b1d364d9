"""``aer``: Adaptive Entropy Regularization (Zhang et al., arXiv 2510.10959).

    α_i = α_t · w(acc_i)
    w(acc) = 1[acc ≤ ρ]   (allocation: threshold, default ρ = 0.5)   or   1 − acc   (allocation: linear)
    α_t, H0 and H* as in ``target`` (see entropyctl.controllers.target).

Ablation switches: ``difficulty_aware: false`` → w ≡ 1 (exactly ``target``);
``anchor: absolute`` → H* = target_entropy; ``dynamic: false`` → α_t ≡ α_0.
With all three off the plans are exactly ``fixed``'s with alpha = alpha_0.
"""

from __future__ import annotations

import torch

from entropyctl.config import AERConfig
from entropyctl.controllers.registry import register_controller
from entropyctl.controllers.target import TargetController

__all__ = ["AERController", "allocation_weights"]


def allocation_weights(accuracy: torch.Tensor, rule: str, rho: float) -> torch.Tensor:
    """w(acc_i) in [0, 1], non-increasing in accuracy."""
    if rule == "threshold":
        return (accuracy <= rho).to(torch.float32)
    if rule == "linear":
        return (1.0 - accuracy).clamp(0.0, 1.0).to(torch.float32)
    raise ValueError(f"allocation: unknown rule {rule!r}")  # pragma: no cover


@register_controller("aer")
class AERController(TargetController):
    """AER: difficulty-aware α_i = α_t·w(acc_i), initial-anchored target τ·H0, dynamic α_t."""

    config: AERConfig  # type: ignore[assignment]
    config_class = AERConfig

    def is_dynamic(self) -> bool:
        return bool(self.config.dynamic)

    def prompt_weights(self, accuracy: torch.Tensor) -> torch.Tensor:
        if not self.config.difficulty_aware:
            return super().prompt_weights(accuracy)
        return allocation_weights(accuracy, self.config.allocation, self.config.rho)
