"""``target``: one dynamic coefficient α_t for every prompt, driven toward a target entropy H*.

This is AER without difficulty-aware allocation (the paper's target-only arm). With
``anchor: {mode: absolute, ...}``, the sign rule and ``update.apply: at_or_below_target`` it is TRL's
adaptive ``entropy_coef`` (which TRL attributes to Skywork-OR1), but for a reading exactly on the
target (TRL raises its coefficient, ``target`` holds it) and unusable readings (TRL reads an empty
window as 0 nats and a NaN one as above the target; ``target`` ignores both).

``update.apply`` (every moving rule): ``always`` (the default) applies α_t in every step;
``at_or_below_target`` applies it only after a reading at or below H* — the rule's own reading, the
smoothed H̃_t for the relative rule, H_t for the others — and 0 otherwise, before the first reading
included. α_t moves the same either way.

    H0      = mean of the first ``anchor.steps`` usable readings H_t
    H*      = τ·H0                     (anchor.mode: initial)   or   target_entropy   (anchor.mode: absolute)

    update.rule: relative (the default)
    H̃_t     = β·H̃_{t−1} + (1 − β)·H_t                          (β = smoothing; H̃ starts at the first reading)
    e_t     = max((H* − H̃_t)/H*, −1)                            (the relative error, |e_t| ≤ 1)
    I_{t+1} = clip(I_t·exp(κ_t·e_t), α_min, α_max)               (κ = step, α_min > 0, I_0 = α_0;
                                                                 κ_t = κ·lower_ratio where e_t < 0)
    α_{t+1} = clip(I_{t+1}·exp(κ_p·e_t), α_min, α_max)           (κ_p = proportional)

    the first release's rules, kept for ablations and to reproduce its runs:
    α_{t+1} = clip(α_t + η·(H* − H_t), α_min, α_max)                 (additive)
    α_{t+1} = clip(α_t + δ·sign(H* − H_t), α_min, α_max)             (sign)
    α_{t+1} = clip(exp(log α_t + η·(H* − H_t)), α_lo, α_max)         (log, α_lo = max(α_min, 1e-6))

Until H0 is anchored (``anchor.mode: initial``) α stays α_0 and the anchoring readings do not
update it (they do seed the smoothed reading H̃).

``update.rearm_at_target`` (relative rule, off by default): at the first reading with e_t ≥ 0 after
anchoring (the smoothed entropy has reached H*), I_t is raised to α_0 (``update.rearm_alpha`` if set)
if it is below, once. The first approach from above winds I down toward α_min while no bonus is
needed; without the rearm the climb that follows starts there, decades below the α that holds the
entropy.

``update.hold_on_approach`` (relative rule, off by default): two slower averages of the readings,
F_t (β_F = 0.95, ~20 steps) and S_t (β_S = 0.99, ~100 steps), both starting at H0 when it is anchored.
Until F_t first comes within 20 % above H* (F_t ≤ 1.2·H*; F_t rather than H̃_t, whose noise would end
the approach at the first lucky reading), the integral is not lowered below α_0 while F_t < S_t (the
entropy is still falling toward the target on its own), so the climb that follows the first approach
starts at α_0, not at the floor. "Falling" means at a pace that reaches 1.2·H* within 1000 steps,
(S_t − F_t)/80 per step (80 steps: the lag between the averages) against F_t − 1.2·H*: an entropy
that settles above the target (the bonus may be what holds it there) approaches its level ever more
slowly, and the plain rule then lowers α as before. (For the first 100 steps after anchoring, while
S_t still remembers H0, only the sign of S_t − F_t counts.)

``update.conditional`` (relative rule, off by default): conditional integration. The integral holds,
I_{t+1} = I_t, while e_t·(H̃_t − F_t) > 0 — the smoothed reading is above H* and below F_t (falling
toward the target), or below H* and above F_t (rising toward it) — and steps as above otherwise; the
proportional part always acts. No threshold: on a stalled entropy the sign of H̃_t − F_t follows the
readings' noise, so the integral moves about half the time instead of freezing.

``update.linear`` = λ (relative rule, 0 = off): after the log step the integral also moves by an
absolute amount, I_{t+1} ← clip(I_{t+1} + λ·α_0·e_t). Far below α_0 this term dominates, so a climb
from the floor crosses the decades where the bonus does nothing at a linear pace (~α/(λ·α_0·e) steps)
instead of the log step's ~ln(α/α_min)/(κ·e); near and above α_0 the log step dominates (at α its
share of the move is λ·α_0/(κ·α)) and the loop is the relative rule's. With ``update.linear_on: climb``
the term acts only while e_t > 0 (below H*): the descent is the log step's alone, so on a plant whose
balancing α lies below α_0 the α_0-sized linear steps do not drive α to the floor. With
``linear_on: low_climb`` it acts only while e_t > 0 and exp(I_t) < α_0: the climb out of the decades
below α_0 is linear, and wherever the integral is at or above α_0 the step is the plain relative rule's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from entropyctl.controllers.base import (
    EntropyController,
    EntropyReading,
    GroupOutcome,
    Plan,
    check_state_keys,
    is_usable_reading,
)
from entropyctl.controllers.config import ControllerConfig, NonNegativeFloat, PositiveFloat
from entropyctl.controllers.parts import (
    TREND_FAST,
    Anchor,
    DynamicUpdate,
    InitialAnchor,
    LogUpdate,
    NoUpdate,
    RelativeUpdate,
    _Bounds,
    migrate_flat,
)
from entropyctl.controllers.registry import register_controller

__all__ = [
    "TargetConfig",
    "TargetController",
    "LOG_ALPHA_FLOOR",
    "updated_alpha",
    "relative_error",
    "relative_step",
]

#: The ``log`` rule works on log α, so α must stay > 0 for it to keep moving: its lower bound is
#: max(alpha_min, LOG_ALPHA_FLOOR). (The additive and sign rules keep updating from α = 0.)
LOG_ALPHA_FLOOR = 1e-6
#: The two averages that tell whether the entropy is still falling (``hold_on_approach``).
TREND_SLOW = 0.99
#: The first approach ends when F_t is within this fraction above H*.
APPROACH_BAND = 0.2
#: The hold lasts while the fall, at its current pace, reaches that band within this many steps.
HOLD_HORIZON = 1000.0
#: The lag between the two averages, in steps: S_t − F_t ≈ TREND_LAG × the fall per step.
TREND_LAG = TREND_SLOW / (1.0 - TREND_SLOW) - TREND_FAST / (1.0 - TREND_FAST)
#: State keys earlier checkpoints do not hold (restored as None / False).
_OPTIONAL_STATE = (
    "smoothed_entropy",
    "integral",
    "trend_fast",
    "trend_slow",
    "approached",
    "climb_run",
    "rearmed",
    "at_or_below",
)


class _AdaptiveConfig(ControllerConfig):
    """Fields shared by ``target`` and ``aer``: the dynamic global coefficient α_t and its target."""

    alpha_0: NonNegativeFloat = Field(
        default=0.005, description="α before anchoring and the start of α_t (within the rule's bounds)."
    )
    update: DynamicUpdate = Field(
        default_factory=RelativeUpdate,
        description="How α_t moves: relative (default) | additive | sign | log, each with its options.",
    )
    anchor: Anchor = Field(
        default_factory=InitialAnchor, description="initial: H* = τ·H0 (AER); absolute: H* = target_entropy."
    )
    clip_low: PositiveFloat = Field(default=0.2, description="ε_low of the clipped surrogate.")
    clip_high: PositiveFloat = Field(default=0.2, description="ε_high of the clipped surrogate.")

    @model_validator(mode="before")
    @classmethod
    def _read_flat_form(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return migrate_flat(dict(data), aer="allocation" in cls.model_fields)
        return data

    @property
    def alpha_bounds(self) -> tuple[float, float]:
        """(α_min, α_max) of the update rule; (α_0, α_0) when α_t does not move."""
        update = self.update
        if isinstance(update, _Bounds):
            return float(update.alpha_min), float(update.alpha_max)
        return float(self.alpha_0), float(self.alpha_0)

    @property
    def alpha_reading_bounds(self) -> tuple[float, float] | None:
        """The bounds α can reach, for the α-at-a-bound readings (controllers.band): None where α does
        not move; the ``log`` rule's floor is max(alpha_min, LOG_ALPHA_FLOOR)."""
        update = self.update
        if not isinstance(update, _Bounds):
            return None
        low = (
            max(float(update.alpha_min), LOG_ALPHA_FLOOR)
            if isinstance(update, LogUpdate)
            else update.alpha_min
        )
        return float(low), float(update.alpha_max)

    @model_validator(mode="after")
    def _check_alpha_0(self) -> _AdaptiveConfig:
        low, high = self.alpha_bounds
        if self.alpha_0 < low:
            raise ValueError(f"alpha_0: must be ≥ update.alpha_min = {low} (got {self.alpha_0})")
        if self.alpha_0 > high:
            raise ValueError(f"alpha_0: must be ≤ update.alpha_max = {high} (got {self.alpha_0})")
        return self


class TargetConfig(_AdaptiveConfig):
    """``target``: AER's target-only arm, one dynamic α_t for every prompt."""

    name: Literal["target"] = "target"  # type: ignore[assignment]


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


def relative_error(target: float, entropy: float) -> float:
    """e = (H* − H)/H*: +1 at zero entropy, 0 on target, negative above it. A zero target (an
    absolute target of 0 nats) asks for no entropy at all: e = −1 for any H > 0."""
    if target > 0.0:
        return (target - entropy) / target
    return -1.0 if entropy > 0.0 else 0.0


def relative_step(alpha: float, error: float, *, step: float, alpha_min: float, alpha_max: float) -> float:
    """The ``relative`` rule's step: α·exp(κ·e) clipped to [α_min, α_max] (α_min > 0).

    The clip is the anti-windup: log α cannot run past its bounds while the error persists."""
    low = min(alpha_min, alpha_max)
    if not math.isfinite(error):
        return float(min(max(alpha, low), alpha_max))
    if step * error == 0.0:  # no move (and no exp/log round-off)
        return float(min(max(alpha, low), alpha_max))
    exponent = math.log(max(alpha, low)) + step * error
    # exp overflows above ~709; anything that large is clipped to alpha_max anyway.
    return float(min(max(math.exp(min(exponent, 700.0)), low), alpha_max))


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
        #: H̃, the smoothed reading the relative rule acts on (None before the first reading).
        self.smoothed_entropy: float | None = None
        #: exp(I_t), the integral part of the relative rule's α (α itself when κ_p = 0).
        self.integral: float | None = None
        #: F_t and S_t, the averages ``hold_on_approach`` compares (None before H0 is anchored).
        self.trend_fast: float | None = None
        self.trend_slow: float | None = None
        #: whether F_t has come within APPROACH_BAND above H* (the first approach is over).
        self.approached = False
        #: consecutive readings whose smoothed error is above ``climb_from`` (for ``climb_after``).
        self.climb_run = 0
        #: whether the smoothed entropy has reached H* once (``rearm_at_target`` acts at that reading).
        self.rearmed = False
        #: whether the rule's last reading was at or below H* (``update.apply: at_or_below_target``)
        self.at_or_below = False
        self.steps_observed = 0
        self.readings_ignored = 0

    # -- what the ablation switches of ``aer`` override -------------------------------------
    def is_dynamic(self) -> bool:
        return not isinstance(self.config.update, NoUpdate)

    def prompt_weights(self, accuracy: torch.Tensor) -> torch.Tensor:
        """w(acc_i); the target-only arm gives every prompt weight 1."""
        return torch.ones_like(accuracy, dtype=torch.float32)

    # -- the API ------------------------------------------------------------------------------
    def target_entropy(self) -> float | None:
        """H*, or None while H0 is not anchored yet (anchor: initial)."""
        anchor = self.config.anchor
        if anchor.mode == "absolute":
            return float(anchor.target_entropy)
        return None if self.h0 is None else anchor.tau * self.h0

    def anchor_steps(self) -> int:
        """Readings averaged into H0 (an absolute target still records H0, from the first reading)."""
        anchor = self.config.anchor
        return int(anchor.steps) if anchor.mode == "initial" else 1

    def plan(self, outcome: GroupOutcome) -> Plan:
        # α_i = α_t · w(acc_i); non-finite accuracies count as 0 (hard).
        accuracy = torch.nan_to_num(outcome.accuracy.detach().float(), nan=0.0, posinf=1.0, neginf=0.0)
        weights = self.prompt_weights(accuracy.clamp(0.0, 1.0))
        coef = (self.applied_alpha() * weights).to(torch.float32)
        return Plan(coef=coef, clip_low=float(self.config.clip_low), clip_high=float(self.config.clip_high))

    def applied_alpha(self) -> float:
        """The α the next plan applies: α_t, or 0 under ``update.apply: at_or_below_target`` until the
        rule's last reading was at or below H*."""
        gated = getattr(self.config.update, "apply", "always") == "at_or_below_target"
        return 0.0 if gated and not self.at_or_below else self.alpha

    def observe(self, reading: EntropyReading) -> None:
        if not is_usable_reading(reading):
            self.readings_ignored += 1
            return
        entropy = float(reading.mean_entropy)
        self.steps_observed += 1
        self.last_entropy = entropy
        update = self.config.update
        if isinstance(update, RelativeUpdate):
            beta = float(update.smoothing)
            previous = self.smoothed_entropy
            self.smoothed_entropy = entropy if previous is None else beta * previous + (1.0 - beta) * entropy
        if self.h0 is None:
            self.anchor_sum += entropy
            self.anchor_count += 1
            if self.anchor_count >= self.anchor_steps():
                self.h0 = self.anchor_sum / self.anchor_count
                self.trend_fast = self.trend_slow = self.h0
            if self.config.anchor.mode == "initial":
                return  # the anchoring readings define H0; α stays α_0 until then
        else:
            fast = entropy if self.trend_fast is None else self.trend_fast
            slow = entropy if self.trend_slow is None else self.trend_slow
            self.trend_fast = TREND_FAST * fast + (1.0 - TREND_FAST) * entropy
            self.trend_slow = TREND_SLOW * slow + (1.0 - TREND_SLOW) * entropy
        target = self.target_entropy()
        if target is None or not self.is_dynamic():
            return
        if isinstance(update, RelativeUpdate):
            smoothed = entropy if self.smoothed_entropy is None else self.smoothed_entropy
            self.at_or_below = smoothed <= target
            self._relative_update(update, target, smoothed)
            return
        self.at_or_below = entropy <= target
        self.alpha = updated_alpha(
            self.alpha,
            target - entropy,
            rule=update.rule,
            eta=float(getattr(update, "eta", 0.0)),
            delta=float(getattr(update, "delta", 0.0)),
            alpha_min=float(getattr(update, "alpha_min", 0.0)),
            alpha_max=float(getattr(update, "alpha_max", 0.0)),
        )

    def _relative_update(self, update: RelativeUpdate, target: float, smoothed: float) -> None:
        """The ``relative`` rule's step from the smoothed reading H̃_t: the integral I, then α (the
        equations in the module docstring), with the opt-in rearm, climb boost, linear term, hold,
        conditional integration and dead band."""
        error = max(relative_error(target, smoothed), -1.0)  # |e| ≤ 1 on both sides
        low, high = float(update.alpha_min), float(update.alpha_max)
        integral = self.alpha if self.integral is None else self.integral
        if error >= 0.0 and not self.rearmed:
            self.rearmed = True
            if update.rearm_at_target:
                rearm = self.config.alpha_0 if update.rearm_alpha is None else update.rearm_alpha
                integral = max(integral, float(rearm))
        if self.trend_fast is not None and self.trend_fast <= (1.0 + APPROACH_BAND) * target:
            self.approached = True
        self.climb_run = self.climb_run + 1 if error > float(update.climb_from) else 0
        boost = float(update.climb_boost) if self.climb_run > int(update.climb_after) else 0.0
        step = float(update.step) * (
            float(update.lower_ratio)
            if error < 0.0
            else 1.0 + boost * max(error - float(update.climb_from), 0.0)
        )
        stepped = relative_step(integral, error, step=step, alpha_min=low, alpha_max=high)
        if update.linear > 0.0 and self._linear_acts(update, error, integral):  # λ·α_0·e beside the log step
            stepped = min(max(stepped + float(update.linear) * float(self.config.alpha_0) * error, low), high)
        if update.hold_on_approach and self._holding(error, target):
            stepped = max(stepped, min(integral, float(self.config.alpha_0)))
        if update.conditional and self._moving_toward(error, smoothed):
            stepped = min(max(integral, low), high)  # the entropy is already on its way: I holds
        if error < 0.0 and -relative_error(target, smoothed) <= float(update.release_band):  # unclipped
            stepped = max(stepped, integral)  # within the dead band above H*: not lowered
        self.integral = stepped
        self.alpha = relative_step(
            self.integral, error, step=float(update.proportional), alpha_min=low, alpha_max=high
        )

    def _linear_acts(self, update: RelativeUpdate, error: float, integral: float) -> bool:
        """Whether ``linear``'s λ·α_0·e term acts on this step (``linear_on``: both signs; the climb,
        e > 0; or the climb while the integral is still below α_0)."""
        if update.linear_on == "both":
            return True
        if update.linear_on == "climb":
            return error > 0.0
        return error > 0.0 and integral < float(self.config.alpha_0)

    def _moving_toward(self, error: float, smoothed: float) -> bool:
        """``conditional``: the smoothed reading H̃ is on the target's side of the 20-step average F_t
        (above H* and falling, or below it and rising)."""
        if self.trend_fast is None or error == 0.0:
            return False
        motion = smoothed - self.trend_fast
        return motion < 0.0 if error < 0.0 else motion > 0.0

    def _holding(self, error: float, target: float) -> bool:
        """``hold_on_approach``: the first approach from above is on and the entropy is still
        falling, so the integral is not lowered below α_0."""
        if self.approached or error >= 0.0 or self.trend_fast is None or self.trend_slow is None:
            return False
        fall_per_step = (self.trend_slow - self.trend_fast) / TREND_LAG
        if fall_per_step <= 0.0:
            return False
        if self.steps_observed - self.anchor_count < 1.0 / (1.0 - TREND_SLOW):
            return True  # S_t still holds H0: the pace is not measured yet, only its sign
        distance = self.trend_fast - (1.0 + APPROACH_BAND) * target
        # an entropy that settles above the target looks like a fall whose pace dies away: release it
        return distance < HOLD_HORIZON * fall_per_step

    def state_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "h0": self.h0,
            "anchor_sum": self.anchor_sum,
            "anchor_count": self.anchor_count,
            "last_entropy": self.last_entropy,
            "smoothed_entropy": self.smoothed_entropy,
            "integral": self.integral,
            "trend_fast": self.trend_fast,
            "trend_slow": self.trend_slow,
            "approached": self.approached,
            "climb_run": self.climb_run,
            "rearmed": self.rearmed,
            "at_or_below": self.at_or_below,
            "steps_observed": self.steps_observed,
            "readings_ignored": self.readings_ignored,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def optional(value: Any) -> float | None:
            return None if value is None else float(value)

        # ``smoothed_entropy`` is optional: checkpoints of the first release do not hold it.
        check_state_keys(self, state, tuple(k for k in self.state_dict() if k not in _OPTIONAL_STATE))
        # Clamped into this config's bounds, so a resume with changed bounds keeps the contract
        # (with the same config this is exact).
        low, high = self.config.alpha_bounds
        self.alpha = min(max(float(state["alpha"]), low), high)
        self.smoothed_entropy = optional(state.get("smoothed_entropy"))
        integral = optional(state.get("integral"))
        self.integral = None if integral is None else min(max(integral, low), high)
        self.trend_fast = optional(state.get("trend_fast"))
        self.trend_slow = optional(state.get("trend_slow"))
        self.approached = bool(state.get("approached", False))
        self.climb_run = int(state.get("climb_run", 0))
        self.rearmed = bool(state.get("rearmed", False))
        self.at_or_below = bool(state.get("at_or_below", False))
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
