"""The base of every controller config (built-in and plugin): a ``name`` literal, no extra keys, finite
numbers only. Each controller module defines its own subclass; the registry parses mappings into them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, model_validator

from entropyctl.validation import NonNegativeFloat, PositiveFloat

__all__ = ["ControllerConfig", "NonNegativeFloat", "PositiveFloat"]


class ControllerConfig(BaseModel):
    """Base of every controller config (built-in and plugin): a ``name`` literal, no extra keys,
    finite numbers only."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)

    name: str

    @model_validator(mode="after")
    def _check_clip_bounds(self) -> ControllerConfig:
        # The surrogate clips ρ to [1 − ε_low, 1 + ε_high]: ε_low ≥ 1 leaves no lower bound (the loss
        # refuses it in step 1), so any config with these fields (a plugin's too) is checked at load.
        clip_low = getattr(self, "clip_low", None)
        if isinstance(clip_low, float | int) and not 0.0 <= clip_low < 1.0:
            raise ValueError(
                f"clip_low: must be in [0, 1): the ratio is clipped at 1 − clip_low (got {clip_low})"
            )
        clip_high = getattr(self, "clip_high", None)
        if isinstance(clip_high, float | int) and clip_high < 0.0:
            raise ValueError(
                f"clip_high: must be ≥ 0: the ratio is clipped at 1 + clip_high (got {clip_high})"
            )
        return self
