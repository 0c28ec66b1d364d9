"""``aer``: Adaptive Entropy Regularization (Zhang et al., arXiv 2510.10959).

    α_i = α_t · w(acc_i)
    w(acc) = 1[acc ≤ a]   (allocation: {rule: threshold, accuracy_threshold: a}, default a = 0.5)
           = 1 − acc      (allocation: {rule: linear})
           = 1            (allocation: {rule: uniform}: exactly ``target``)
    α_t, H0 and H* as in ``target`` (see entropyctl.controllers.target).

Ablation switches: ``allocation: {rule: uniform}`` → w ≡ 1; ``anchor: {mode: absolute, ...}`` →
H* = target_entropy; ``update: {rule: none}`` → α_t ≡ α_0. With all three the plans are exactly
``fixed``'s with alpha = alpha_0.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from entropyctl.controllers.parts import Allocation, AnyUpdate, RelativeUpdate, ThresholdAllocation
from entropyctl.controllers.registry import register_controller
from entropyctl.controllers.target import TargetController, _AdaptiveConfig

__all__ = ["AERConfig", "AERController", "allocation_weights"]


class AERConfig(_AdaptiveConfig):
    """``aer``: Adaptive Entropy Regularization, α_i = α_t · w(acc_i)."""

    name: Literal["aer"] = "aer"  # type: ignore[assignment]
    update: AnyUpdate = Field(  # type: ignore[assignment]
        default_factory=RelativeUpdate,
        description="How α_t moves: relative (default) | additive | sign | log | none (α_t ≡ α_0).",
    )
    allocation: Allocation = Field(
        default_factory=ThresholdAllocation,
        description="w(acc): threshold (default) | linear | uniform (w ≡ 1, the ablation).",
    )


def allocation_weights(accuracy: torch.Tensor, rule: str, accuracy_threshold: float = 0.5) -> torch.Tensor:
    """w(acc_i) in [0, 1], non-increasing in accuracy."""
    if rule == "threshold":
        return (accuracy <= accuracy_threshold).to(torch.float32)
    if rule == "linear":
        return (1.0 - accuracy).clamp(0.0, 1.0).to(torch.float32)
    if rule == "uniform":
        return torch.ones_like(accuracy, dtype=torch.float32)
    raise ValueError(f"allocation: unknown rule {rule!r}")  # pragma: no cover


@register_controller("aer")
class AERController(TargetController):
    """AER: difficulty-aware α_i = α_t·w(acc_i), initial-anchored target τ·H0, dynamic α_t."""

    config: AERConfig  # type: ignore[assignment]
    config_class = AERConfig

    def prompt_weights(self, accuracy: torch.Tensor) -> torch.Tensor:
        allocation = self.config.allocation
        return allocation_weights(accuracy, allocation.rule, getattr(allocation, "accuracy_threshold", 0.5))
