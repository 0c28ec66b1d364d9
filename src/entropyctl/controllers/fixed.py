"""``fixed``: a constant entropy coefficient α for every prompt (the classic entropy bonus)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from entropyctl.controllers.base import (
    EntropyController,
    EntropyReading,
    GroupOutcome,
    Plan,
    check_state_keys,
    is_usable_reading,
)
from entropyctl.controllers.config import ControllerConfig, NonNegativeFloat, PositiveFloat
from entropyctl.controllers.registry import register_controller

__all__ = ["FixedConfig", "FixedController", "OpenLoopController"]


class FixedConfig(ControllerConfig):
    """``fixed``: one constant coefficient for every prompt, symmetric or explicit clip bounds."""

    name: Literal["fixed"] = "fixed"
    alpha: NonNegativeFloat = Field(default=0.005, description="Entropy coefficient α for every prompt.")
    clip_low: PositiveFloat = Field(default=0.2, description="ε_low of the clipped surrogate.")
    clip_high: PositiveFloat = Field(default=0.2, description="ε_high of the clipped surrogate.")


class OpenLoopController(EntropyController):
    """Base of controllers whose plan never depends on the entropy readings (open loop). It still
    holds state, for logging only: the last usable reading, how many were used and how many were
    ignored (and round-trips it through ``state_dict``)."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.last_entropy: float | None = None
        self.steps_observed = 0
        self.readings_ignored = 0

    def observe(self, reading: EntropyReading) -> None:
        if not is_usable_reading(reading):
            self.readings_ignored += 1
            return
        self.steps_observed += 1
        self.last_entropy = float(reading.mean_entropy)

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_entropy": self.last_entropy,
            "steps_observed": self.steps_observed,
            "readings_ignored": self.readings_ignored,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(self, state, ("last_entropy", "steps_observed", "readings_ignored"))
        last = state["last_entropy"]
        self.last_entropy = None if last is None else float(last)
        self.steps_observed = int(state["steps_observed"])
        self.readings_ignored = int(state["readings_ignored"])

    def _alpha(self) -> float:
        return 0.0

    def metrics(self) -> dict[str, float]:
        return {
            "alpha": self._alpha(),
            "target_entropy": math.nan,
            "h0": math.nan,
            "last_entropy": math.nan if self.last_entropy is None else self.last_entropy,
            "readings_ignored": float(self.readings_ignored),
            "steps_observed": float(self.steps_observed),
        }


@register_controller("fixed")
class FixedController(OpenLoopController):
    """Constant coefficient α for every prompt; clip bounds (clip_low, clip_high)."""

    config: FixedConfig
    config_class = FixedConfig

    def plan(self, outcome: GroupOutcome) -> Plan:
        # α_i = α for every prompt i.
        return self.uniform_plan(outcome, self.config.alpha, self.config.clip_low, self.config.clip_high)

    def _alpha(self) -> float:
        return float(self.config.alpha)
