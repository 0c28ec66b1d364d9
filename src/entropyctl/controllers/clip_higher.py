"""``clip_higher`` (DAPO): no entropy bonus; exploration comes from a wider upper clip bound."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from entropyctl.controllers.base import GroupOutcome, Plan
from entropyctl.controllers.config import ControllerConfig, PositiveFloat
from entropyctl.controllers.fixed import OpenLoopController
from entropyctl.controllers.registry import register_controller

__all__ = ["ClipHigherConfig", "ClipHigherController"]


class ClipHigherConfig(ControllerConfig):
    """``clip_higher`` (DAPO): no entropy bonus; a wider upper clip bound keeps exploration."""

    name: Literal["clip_higher"] = "clip_higher"
    clip_low: PositiveFloat = Field(default=0.2, description="ε_low of the clipped surrogate.")
    clip_high: PositiveFloat = Field(
        default=0.28, description="ε_high of the clipped surrogate (DAPO: 0.28)."
    )


@register_controller("clip_higher")
class ClipHigherController(OpenLoopController):
    """No entropy bonus (α_i = 0); decoupled clip bounds ε_low = 0.2, ε_high = 0.28 (DAPO)."""

    config: ClipHigherConfig
    config_class = ClipHigherConfig

    def plan(self, outcome: GroupOutcome) -> Plan:
        return self.uniform_plan(outcome, 0.0, self.config.clip_low, self.config.clip_high)
