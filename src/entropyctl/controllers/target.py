"""``target``: one dynamic coefficient α_t for every prompt, driven toward a target entropy H*.

This is AER without difficulty-aware allocation (the paper's target-only arm); with
``anchor: absolute`` it is the Skywork-OR1/TRL-style adaptive entropy coefficient.

    H0      = mean of the first ``anchor_steps`` usable readings H_t
    H*      = τ·H0                     (anchor: initial)   or   target_entropy   (anchor: absolute)
    α_{t+1} = clip(α_t + η·(H* − H_t), α_min, α_max)                 (update: additive)
    α_{t+1} = clip(α_t + δ·sign(H* − H_t), α_min, α_max)             (update: sign)
    α_{t+1} = clip(exp(log α_t + η·(H* − H_t)), α_lo, α_max)         (update: log, α_lo = max(α_min, 1e-6))

Until H0 is anchored (``anchor: initial``) α stays α_0 and the anchoring readings do not update it.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from entropyctl.config import ControllerConfig, TargetConfig
from entropyctl.controllers.base import (
    EntropyController,
    EntropyReading,
    GroupOutcome,
    Plan,
    check_state_keys,
    is_usable_reading,
)
from entropyctl.controllers.registry import register_controller

__all__ = ["TargetController", "LOG_ALPHA_FLOOR"]

#: The ``log`` rule works on log α, so α must stay > 0 for it to keep moving: its lower bound is
#: max(alpha_min, LOG_ALPHA_FLOOR). (The additive and sign rules keep updating from α = 0.)
LOG_ALPHA_FLOOR = 1e-6


def updated_alpha(
    alpha: float,
    error: float,
    *,
    rule: str,
    eta: float,
    delta: float,
    alpha_min: float,
    alpha_max: float,
) -> float:
    """One step of the update rule for the entropy error ``error = H* − H_t`` (nats).

    α never moves against the sign of the error (a guard that only matters where the log rule's
    floor lies above the current α) and always lands in its bounds.
    """
    if rule == "additive":
        proposal = alpha + eta * error
        low = alpha_min
    elif rule == "sign":
        proposal = alpha + delta * (1.0 if error > 0 else -1.0 if error < 0 else 0.0)
        low = alpha_min
    elif rule == "log":
        low = min(max(alpha_min, LOG_ALPHA_FLOOR), alpha_max)
        if low <= 0.0:  # alpha_max = 0: nothing to move
            return float(min(max(alpha, alpha_min), alpha_max))
        exponent = math.log(max(alpha, low)) + eta * error
        # exp overflows above ~709; anything that large is clipped to alpha_max anyway.
        proposal = math.exp(min(exponent, 700.0)) if not math.isnan(exponent) else alpha
    else:  # pragma: no cover - the config's Literal makes this unreachable
        raise ValueError(f"update: unknown rule {rule!r}")
    if math.isnan(proposal):
        return alpha
    new = min(max(proposal, low), alpha_max)
    if error > 0:
        new = max(new, alpha)
    elif error < 0:
        new = min(new, alpha)
    else:
        new = alpha
    return float(new)


@register_controller("target")
class TargetController(EntropyController):
    """One dynamic α_t for every prompt, driven toward H* = τ·H0 (or an absolute target)."""

    config: TargetConfig
    config_class: ClassVar[type[ControllerConfig]] = TargetConfig

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.alpha: float = float(config.alpha_0)
        self.h0: float | None = None
        self.anchor_sum = 0.0
        self.anchor_count = 0
        self.last_entropy: float | None = None
        self.steps_observed = 0
        self.readings_ignored = 0

    # -- what the ablation switches of ``aer`` override -------------------------------------
    def is_dynamic(self) -> bool:
        return True

    def prompt_weights(self, accuracy: torch.Tensor) -> torch.Tensor:
        """w(acc_i); the target-only arm gives every prompt weight 1."""
        return torch.ones_like(accuracy, dtype=torch.float32)

    # -- the API ------------------------------------------------------------------------------
    def target_entropy(self) -> float | None:
        """H*, or None while H0 is not anchored yet (anchor: initial)."""
        if self.config.anchor == "absolute" and self.config.target_entropy is not None:
            return float(self.config.target_entropy)  # the config requires it with anchor: absolute
        return None if self.h0 is None else self.config.tau * self.h0

    def plan(self, outcome: GroupOutcome) -> Plan:
        # α_i = α_t · w(acc_i); non-finite accuracies count as 0 (hard).
        accuracy = torch.nan_to_num(outcome.accuracy.detach().float(), nan=0.0, posinf=1.0, neginf=0.0)
        weights = self.prompt_weights(accuracy.clamp(0.0, 1.0))
        coef = (self.alpha * weights).to(torch.float32)
        return Plan(coef=coef, clip_low=float(self.config.clip_low), clip_high=float(self.config.clip_high))

    def observe(self, reading: EntropyReading) -> None:
        if not is_usable_reading(reading):
            self.readings_ignored += 1
            return
        entropy = float(reading.mean_entropy)
        self.steps_observed += 1
        self.last_entropy = entropy
        if self.h0 is None:
            self.anchor_sum += entropy
            self.anchor_count += 1
            if self.anchor_count >= self.config.anchor_steps:
                self.h0 = self.anchor_sum / self.anchor_count
            if self.config.anchor == "initial":
                return  # the anchoring readings define H0; α stays α_0 until then
        target = self.target_entropy()
        if target is None or not self.is_dynamic():
            return
        self.alpha = updated_alpha(
            self.alpha,
            target - entropy,
            rule=self.config.update,
            eta=self.config.step_size,
            delta=self.config.delta,
            alpha_min=self.config.alpha_min,
            alpha_max=self.config.alpha_max,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "h0": self.h0,
            "anchor_sum": self.anchor_sum,
            "anchor_count": self.anchor_count,
            "last_entropy": self.last_entropy,
            "steps_observed": self.steps_observed,
            "readings_ignored": self.readings_ignored,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def optional(value: Any) -> float | None:
            return None if value is None else float(value)

        check_state_keys(self, state, tuple(self.state_dict()))
        # Clamped into this config's bounds, so a resume with changed bounds keeps the contract
        # (with the same config this is exact).
        self.alpha = min(max(float(state["alpha"]), self.config.alpha_min), self.config.alpha_max)
        self.h0 = optional(state["h0"])
        self.anchor_sum = float(state["anchor_sum"])
        self.anchor_count = int(state["anchor_count"])
        self.last_entropy = optional(state["last_entropy"])
        self.steps_observed = int(state["steps_observed"])
        self.readings_ignored = int(state["readings_ignored"])

    def metrics(self) -> dict[str, float]:
        target = self.target_entropy()
        return {
            "alpha": self.alpha,
            "target_entropy": math.nan if target is None else target,
            "h0": math.nan if self.h0 is None else self.h0,
            "last_entropy": math.nan if self.last_entropy is None else self.last_entropy,
            "readings_ignored": float(self.readings_ignored),
            "steps_observed": float(self.steps_observed),
            "anchored": float(self.h0 is not None),
        }
