"""``clip_higher`` (DAPO): no entropy bonus; exploration comes from a wider upper clip bound."""

from __future__ import annotations

from entropyctl.config import ClipHigherConfig
from entropyctl.controllers.base import GroupOutcome, Plan
from entropyctl.controllers.fixed import OpenLoopController
from entropyctl.controllers.registry import register_controller

__all__ = ["ClipHigherController"]


@register_controller("clip_higher")
class ClipHigherController(OpenLoopController):
    """No entropy bonus (α_i = 0); decoupled clip bounds ε_low = 0.2, ε_high = 0.28 (DAPO)."""

    config: ClipHigherConfig
    config_class = ClipHigherConfig

    def plan(self, outcome: GroupOutcome) -> Plan:
        return self.uniform_plan(outcome, 0.0, self.config.clip_low, self.config.clip_high)
