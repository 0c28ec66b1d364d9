"""The nested parts of the ``target`` and ``aer`` configs: the update rule, the anchor of the target
entropy and the allocation over prompts, one variant per ``rule``/``mode``, each holding only the
options that variant uses; and the reading of the first release's flat form into them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from entropyctl.validation import NonNegativeFloat, PositiveFloat

__all__ = [
    "RelativeUpdate",
    "AdditiveUpdate",
    "SignUpdate",
    "LogUpdate",
    "NoUpdate",
    "DynamicUpdate",
    "AnyUpdate",
    "InitialAnchor",
    "AbsoluteAnchor",
    "Anchor",
    "ThresholdAllocation",
    "LinearAllocation",
    "UniformAllocation",
    "Allocation",
    "PART_VARIANTS",
    "migrate_flat",
]


class _Part(BaseModel):
    """A nested part of a controller config (an update rule, an anchor, an allocation rule): one
    variant per ``rule``/``mode``, each holding only the options that variant uses."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class _Bounds(_Part):
    """α_t's bounds, part of every rule that moves α_t."""

    rule: str
    alpha_min: NonNegativeFloat = Field(default=0.0, description="Lower bound of α_t.")
    alpha_max: NonNegativeFloat = Field(default=0.05, description="Upper bound of α_t.")
    apply: Literal["always", "at_or_below_target"] = Field(
        default="always",
        description=(
            "always: the plan applies α_t in every step; at_or_below_target: only after a reading at or "
            "below H* (the rule's own reading: the smoothed H̃ for relative), 0 otherwise and before the "
            "first such reading (TRL's adaptive entropy gate). α_t itself moves either way."
        ),
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> _Bounds:
        if self.alpha_min > self.alpha_max:
            raise ValueError(f"alpha_min: must be ≤ alpha_max = {self.alpha_max} (got {self.alpha_min})")
        return self


#: The weight of the 20-step average F_t of the readings (``hold_on_approach``, ``conditional``).
TREND_FAST = 0.95


class RelativeUpdate(_Bounds):
    """``relative`` (the default): a multiplicative step on the relative error of a smoothed reading,

    H̃_t = β·H̃_{t−1} + (1 − β)·H_t,   e_t = max((H* − H̃_t)/H*, −1),
    I_{t+1} = clip(I_t + κ_t·e_t),   log α_{t+1} = clip(I_{t+1} + κ_p·e_t),
    κ_t = κ·(1 + c·max(e_t − e_c, 0)) where e_t ≥ 0, κ·lower_ratio where e_t < 0
    (c = climb_boost, e_c = climb_from; with climb_after = M the boost waits until e has been above
    e_c for M consecutive readings).

    With ``hold_on_approach``, I is not lowered below log α_0 during the first approach from above
    while the entropy is falling (entropyctl.controllers.target).
    With ``conditional``, I is held while H̃ moves toward H* (H̃ − F_t of the sign of e, F_t the
    20-step average of the readings).
    With ``linear`` = λ, λ·α_0·e_t is added to exp(I) after the log step (a hybrid of the relative
    and the additive rule: additive far below α_0, relative near and above it); with ``linear_on:
    climb`` only while e_t > 0, with ``low_climb`` only while e_t > 0 and exp(I) < α_0.
    With ``rearm_at_target``, I is raised to log α_0 (or log ``rearm_alpha``; if below it) at the
    first reading with e ≥ 0, once.

    Its loop gain κ·(d log H / d log α) does not depend on the units of entropy or of α
    (docs/controllers.md derives it and why κ < 1 keeps the loop stable)."""

    rule: Literal["relative"] = "relative"  # type: ignore[assignment]
    step: float = Field(default=0.05, gt=0, le=1, description="κ: log α per unit of relative error.")
    proportional: float = Field(
        default=2.0,
        ge=0,
        le=5,
        description="κ_p: the proportional term, log α = I + κ_p·e (0: pure integral).",
    )
    smoothing: float = Field(
        default=0.8, ge=0, lt=1, description="β of the EMA of the readings (0: use each reading as is)."
    )
    alpha_min: float = Field(default=1e-5, gt=0, description="Lower bound of α_t (> 0: log α must exist).")
    alpha_max: NonNegativeFloat = Field(default=1.0, description="Upper bound of α_t.")
    hold_on_approach: bool = Field(
        default=False,
        description=(
            "Until a 20-step average of the entropy first comes within 20 % above H*, do not lower the "
            "integral below α_0 while the entropy is still falling (that average below a 100-step one): "
            "the first approach then starts its climb from α_0 instead of the floor."
        ),
    )
    lower_ratio: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description=(
            "κ_down/κ: the integral is lowered at this fraction of the rate at which it is raised "
            "(1: symmetric). Below 1 it leans toward keeping the bonus: a long stay above H* winds α "
            "down more slowly, so the climb when the entropy falls below H* starts nearer the α that holds it."
        ),
    )
    climb_boost: float = Field(
        default=0.0,
        ge=0,
        le=100,
        description=(
            "c: below the target the integral climbs at κ·(1 + c·max(e − climb_from, 0)), so an entropy "
            "that falls well below H* is answered several times faster than a small error (0: off)."
        ),
    )
    climb_from: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="The relative error below H* from which ``climb_boost`` acts (0: from the target).",
    )
    climb_after: int = Field(
        default=0,
        ge=0,
        le=1000,
        description=(
            "``climb_boost`` acts only once the smoothed error has stayed above ``climb_from`` for this many "
            "consecutive readings (0: at once): a noisy crossing shorter than that gets the plain step."
        ),
    )
    release_band: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description=(
            "A dead band above the target: the integral is not lowered while the smoothed entropy is "
            "within this fraction above H* (0: lowered whenever it is above)."
        ),
    )
    conditional: bool = Field(
        default=False,
        description=(
            "Conditional integration: the integral is not moved while the entropy is already moving "
            "toward H* (above it and falling, or below it and rising: H̃ on the target's side of the "
            "20-step average of the readings). The approach from above then leaves α near α_0 instead "
            "of winding it down to the floor, and a climb stops adding once the entropy answers."
        ),
    )
    linear: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description=(
            "λ: an absolute term λ·α_0·e added to the integral at each step, on top of the log step "
            "(0: off). Far below α_0 it dominates, so a climb from the floor crosses the decades where "
            "the bonus does nothing in ~1/(λ·e) steps instead of ~ln(α/α_min)/(κ·e); near and above α_0 "
            "the log step dominates and the loop is the relative rule's."
        ),
    )
    linear_on: Literal["both", "climb", "low_climb"] = Field(
        default="both",
        description=(
            "Which errors ``linear`` acts on: both signs, or only below H* (``climb``: e > 0). With "
            "``climb`` the descent is the log step's alone, so a plant whose balancing α lies below α_0 "
            "is not pushed to the floor by α_0-sized linear steps; the climb out of the floor is linear. "
            "``low_climb``: only below H* and while the integral is below α_0, so the loop above α_0 (where "
            "a settled run on a strong collapse holds α) is the plain relative rule's."
        ),
    )
    rearm_at_target: bool = Field(
        default=False,
        description=(
            "When the smoothed entropy first reaches H* (the first reading with e ≥ 0 after anchoring), "
            "raise the integral to α_0 if the approach from above wound it lower, once: the climb then "
            "starts at α_0 instead of near the floor, and the approach itself gets no bonus it did not "
            "ask for."
        ),
    )
    rearm_alpha: float | None = Field(
        default=None,
        gt=0,
        description=(
            "The α that ``rearm_at_target`` raises the integral to (None: α_0). Below α_0 it rearms "
            "more gently: a strong-gain plant is not kicked above the band by a full α_0."
        ),
    )

    @model_validator(mode="after")
    def _check_companions(self) -> RelativeUpdate:
        """Options that only shape another option are refused without it (they would do nothing)."""
        alone = [
            ("climb_from", self.climb_from != 0.0, "climb_boost above 0", self.climb_boost > 0.0),
            ("climb_after", self.climb_after != 0, "climb_boost above 0", self.climb_boost > 0.0),
            ("linear_on", self.linear_on != "both", "linear above 0", self.linear > 0.0),
        ]
        for name, given, needs, present in alone:
            if given and not present:
                raise ValueError(f"{name}: acts only with {needs} (set it, or drop {name})")
        if self.conditional and self.smoothing >= TREND_FAST:
            raise ValueError(
                f"conditional: compares the smoothed reading (smoothing {self.smoothing}) with the 20-step "
                f"average (weight {TREND_FAST}), so it needs smoothing below {TREND_FAST}: at {TREND_FAST} "
                "the two are the same and it does nothing, above it the test is reversed"
            )
        return self

    @model_validator(mode="after")
    def _check_rearm(self) -> RelativeUpdate:
        if self.rearm_alpha is not None:
            if not self.rearm_at_target:
                raise ValueError(
                    "rearm_alpha: acts only with rearm_at_target: true (set it, or drop rearm_alpha)"
                )
            if not self.alpha_min <= self.rearm_alpha <= self.alpha_max:
                raise ValueError(
                    f"rearm_alpha: must be within [alpha_min, alpha_max] = [{self.alpha_min}, {self.alpha_max}]"
                    f" (got {self.rearm_alpha})"
                )
        return self


class AdditiveUpdate(_Bounds):
    """``additive``: α_{t+1} = clip(α_t + η·(H* − H_t)) (the paper's form, as we read it)."""

    rule: Literal["additive"] = "additive"  # type: ignore[assignment]
    eta: PositiveFloat = Field(
        default=0.002, description="η: α per nat of entropy error (> 0; a fixed α is update: none)."
    )


class SignUpdate(_Bounds):
    """``sign``: α_{t+1} = clip(α_t + δ·sign(H* − H_t))."""

    rule: Literal["sign"] = "sign"  # type: ignore[assignment]
    delta: PositiveFloat = Field(
        default=0.0001, description="δ: α per step (> 0; a fixed α is update: none)."
    )


class LogUpdate(_Bounds):
    """``log``: log α_{t+1} = log α_t + η·(H* − H_t), error in nats, α ≥ max(alpha_min, 1e-6)."""

    rule: Literal["log"] = "log"  # type: ignore[assignment]
    eta: PositiveFloat = Field(
        default=0.5, description="η: log α per nat of entropy error (> 0; a fixed α is update: none)."
    )


class NoUpdate(_Part):
    """``none``: α_t ≡ α_0 (the ablation without dynamic adjustment)."""

    rule: Literal["none"] = "none"


DynamicUpdate = Annotated[
    RelativeUpdate | AdditiveUpdate | SignUpdate | LogUpdate, Field(discriminator="rule")
]
AnyUpdate = Annotated[
    RelativeUpdate | AdditiveUpdate | SignUpdate | LogUpdate | NoUpdate, Field(discriminator="rule")
]


class InitialAnchor(_Part):
    """``initial``: H* = τ·H0, H0 the mean of the first ``steps`` usable readings (AER)."""

    mode: Literal["initial"] = "initial"
    tau: float = Field(default=0.4, gt=0, le=1, description="Target fraction τ of the initial entropy H0.")
    steps: int = Field(default=1, ge=1, description="H0 = mean of the first `steps` readings.")


class AbsoluteAnchor(_Part):
    """``absolute``: H* = target_entropy nats."""

    mode: Literal["absolute"] = "absolute"
    target_entropy: NonNegativeFloat = Field(description="The target H* in nats.")


Anchor = Annotated[InitialAnchor | AbsoluteAnchor, Field(discriminator="mode")]


class ThresholdAllocation(_Part):
    """``threshold``: w(acc) = 1[acc ≤ accuracy_threshold] (AER)."""

    rule: Literal["threshold"] = "threshold"
    accuracy_threshold: float = Field(
        default=0.5, ge=0, le=1, description="Prompts with group accuracy ≤ this get the bonus."
    )


class LinearAllocation(_Part):
    """``linear``: w(acc) = 1 − acc."""

    rule: Literal["linear"] = "linear"


class UniformAllocation(_Part):
    """``uniform``: w ≡ 1 (the ablation without difficulty-aware allocation)."""

    rule: Literal["uniform"] = "uniform"


Allocation = Annotated[
    ThresholdAllocation | LinearAllocation | UniformAllocation, Field(discriminator="rule")
]

#: The nested parts and the key naming each one's variant.
PART_TAGS = {"update": "rule", "anchor": "mode", "allocation": "rule"}
PART_DEFAULTS = {"update": "relative", "anchor": "initial", "allocation": "threshold"}
PART_VARIANTS: dict[str, dict[str, type[_Part]]] = {
    "update": {
        "relative": RelativeUpdate,
        "additive": AdditiveUpdate,
        "sign": SignUpdate,
        "log": LogUpdate,
        "none": NoUpdate,
    },
    "anchor": {"initial": InitialAnchor, "absolute": AbsoluteAnchor},
    "allocation": {
        "threshold": ThresholdAllocation,
        "linear": LinearAllocation,
        "uniform": UniformAllocation,
    },
}
#: The flat (first-release) keys, the part each one moves into and its name there.
_FLAT_KEYS = {
    "eta": ("update", "eta"),
    "delta": ("update", "delta"),
    "alpha_min": ("update", "alpha_min"),
    "alpha_max": ("update", "alpha_max"),
    "tau": ("anchor", "tau"),
    "anchor_steps": ("anchor", "steps"),
    "target_entropy": ("anchor", "target_entropy"),
    "rho": ("allocation", "accuracy_threshold"),
}
#: What the first release wrote for each flat key by default: a config that wrote every field
#: (a run directory's config.yaml) holds these for options its rule ignores.
_FLAT_DEFAULTS: dict[str, Any] = {
    "eta": None,
    "delta": 0.0001,
    "alpha_min": 0.0,
    "alpha_max": 0.05,
    "tau": 0.4,
    "anchor_steps": 1,
    "target_entropy": None,
    "rho": 0.5,
}


def _fields_of(part: str, variant: str) -> tuple[str, ...]:
    cls = PART_VARIANTS[part].get(variant)
    return tuple(cls.model_fields) if cls is not None else ()


def drop_other_spelling(controller: dict[str, Any], path: Sequence[str]) -> None:
    """After an override has set ``path`` in a controller mapping, drop the other spelling of the same
    option — the first release's flat ``tau`` against the nested ``anchor.tau``, and a whole part given
    as a mapping against the flat keys of the options it names — so that the override wins whichever
    form the config held. A part given by name (``update: log``) keeps the flat keys that configure it."""
    if len(path) == 1 and path[0] in _FLAT_KEYS:
        part, inner = _FLAT_KEYS[path[0]]
        nested = controller.get(part)
        if isinstance(nested, dict):
            nested.pop(inner, None)
    elif len(path) == 1 and path[0] in PART_TAGS and isinstance(controller.get(path[0]), dict):
        for key, spelled in _FLAT_KEYS.items():  # a whole part: the options it names (not a rule's name)
            if spelled[0] == path[0] and spelled[1] in controller[path[0]]:
                controller.pop(key, None)
    elif len(path) == 2:
        for key, spelled in _FLAT_KEYS.items():
            if spelled == tuple(path):
                controller.pop(key, None)


def _flat_into_nested(
    part: str, current: Any, flat: Mapping[str, tuple[str, Any]], errors: list[str]
) -> dict[str, Any]:
    """A nested ``part`` (or none) with the flat keys that belong to it merged in (``--set
    controller.tau=0.3`` on a nested config); a key its variant does not take, or one spelled both ways
    with two values in one config, is an error appended to ``errors``."""
    tag = PART_TAGS[part]
    merged = dict(current) if isinstance(current, Mapping) else {}
    variant = merged.get(tag, PART_DEFAULTS[part])
    fields = _fields_of(part, variant) if isinstance(variant, str) else ()
    for inner, (key, value) in flat.items():
        if value is None and inner not in fields:
            continue
        if inner in merged and merged[inner] != value:  # one config spelling it both ways
            errors.append(
                f"{key} and {part}.{inner} are both given ({value!r} and {merged[inner]!r}): keep "
                f"one ({part}.{inner} is the current form)"
            )
            continue
        if inner not in fields and fields and value == _FLAT_DEFAULTS[key]:
            continue  # the first release wrote every field: its default is no choice (as by name)
        if inner not in fields and fields:
            options = ", ".join(f for f in fields if f != tag) or "no options"
            errors.append(
                f"{key}: the {part} {tag} {variant!r} does not use {key} (its options: {options}); "
                f"set {part}.{tag} to one that does, e.g. {part}: {{{tag}: ..., {inner}: {value!r}}}"
            )
            continue
        merged[inner] = value
    return merged


def migrate_flat(data: dict[str, Any], *, aer: bool) -> dict[str, Any]:
    """Read the flat form of the first release (``eta: 0.05``, ``update: sign``, ``tau: 0.4``,
    ``rho: 0.5``, ``dynamic: false``...) into the nested one, with exactly its old meaning:

    - ``update``/``anchor``/``allocation`` given as a name, or ``eta``/``delta`` without ``update``,
      is the old flat form; there ``update`` defaulted to ``additive``.
    - a flat key moves into its part (``rho`` becomes ``allocation.accuracy_threshold``,
      ``anchor_steps`` ``anchor.steps``); into a nested part too (``--set controller.tau=0.3``).
    - ``dynamic: false`` is ``update: {rule: none}``; ``difficulty_aware: false`` is
      ``allocation: {rule: uniform}``; the options those switches turned off are dropped, as the
      first release ignored them.
    - any other option the chosen variant would ignore is an error naming the nested form, unless it
      holds the first release's default (what it wrote for every field).
    """
    data = dict(data)
    errors: list[str] = []
    switches = {"update": ("dynamic", "none"), "allocation": ("difficulty_aware", "uniform")} if aer else {}
    flat_by_part: dict[str, dict[str, tuple[str, Any]]] = {part: {} for part in PART_TAGS}
    for key, (part, inner) in _FLAT_KEYS.items():
        if key in data and (aer or part != "allocation"):
            flat_by_part[part][inner] = (key, data.pop(key))
    for part, tag in PART_TAGS.items():
        if part == "allocation" and not aer:
            continue
        flat = flat_by_part[part]
        current = data.get(part)
        switch = switches.get(part)
        switched_off = False
        if switch is not None and switch[0] in data:
            value = data.pop(switch[0])
            if not isinstance(value, bool):
                errors.append(f"{switch[0]}: must be true or false (got {value!r})")
                continue
            switched_off = value is False
        if switched_off:
            data[part] = {tag: switch[1]}  # type: ignore[index]
            continue
        legacy_name = part == "update" and current is None and ("eta" in flat or "delta" in flat)
        if isinstance(current, str) or legacy_name:
            variant = current if isinstance(current, str) else "additive"
            if variant not in PART_VARIANTS[part]:
                names = ", ".join(repr(v) for v in PART_VARIANTS[part] if aer or v not in ("none",))
                errors.append(f"{part}: must be one of {names} (got {variant!r})")
                continue
            fields = _fields_of(part, variant)
            merged: dict[str, Any] = {tag: variant}
            for inner, (key, value) in flat.items():
                if inner in fields and value is not None:
                    merged[inner] = value
                elif inner not in fields and value is not None and value != _FLAT_DEFAULTS[key]:
                    options = ", ".join(f for f in fields if f != tag) or "no options"
                    takers = [v for v in PART_VARIANTS[part] if inner in _fields_of(part, v)]
                    errors.append(
                        f"{key}: the {part} {tag} {variant!r} does not use {key} (its options: {options}); "
                        f"write {part}: {{{tag}: {takers[0] if takers else '<one that does>'}, {inner}: {value!r}}}"
                    )
            data[part] = merged
        elif flat:
            data[part] = _flat_into_nested(part, current, flat, errors)
    if errors:
        raise ValueError("\n".join(errors))
    for part, tag in PART_TAGS.items():
        current = data.get(part)
        if isinstance(current, Mapping) and tag not in current:
            data[part] = {tag: PART_DEFAULTS[part], **current}
    return data
