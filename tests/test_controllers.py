"""Behaviour of the four built-in controllers, example by example (design.md §2)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from entropyctl import EntropyReading, GroupOutcome, create_controller
from entropyctl.controllers.target import LOG_ALPHA_FLOOR, updated_alpha


def outcome(*accuracy: float, step: int = 0) -> GroupOutcome:
    return GroupOutcome(accuracy=torch.tensor(accuracy), group_size=8, step=step)


def reading(entropy: float, tokens: int = 100, step: int = 0) -> EntropyReading:
    return EntropyReading(mean_entropy=entropy, tokens=tokens, step=step)


def integral(controller: Any) -> float:
    """exp(I_t), the relative rule's integral part, from the controller's state."""
    return float(controller.state_dict()["integral"])


def test_fixed_gives_alpha_to_every_prompt_and_its_clip_bounds() -> None:
    controller = create_controller({"name": "fixed", "alpha": 0.01, "clip_low": 0.1, "clip_high": 0.3})
    plan = controller.plan(outcome(0.0, 0.5, 1.0))
    assert plan.coef.dtype == torch.float32
    assert torch.equal(plan.coef, torch.full((3,), 0.01, dtype=torch.float32))
    assert (plan.clip_low, plan.clip_high) == (0.1, 0.3)
    controller.observe(reading(0.7))
    metrics = controller.metrics()
    assert metrics["alpha"] == 0.01 and metrics["last_entropy"] == 0.7
    assert math.isnan(metrics["h0"]) and math.isnan(metrics["target_entropy"])


def test_clip_higher_is_dapo_defaults_with_no_bonus() -> None:
    plan = create_controller("clip_higher").plan(outcome(0.2, 0.9))
    assert torch.equal(plan.coef, torch.zeros(2))
    assert (plan.clip_low, plan.clip_high) == (0.2, 0.28)


def test_target_anchors_h0_then_follows_the_additive_rule() -> None:
    controller = create_controller(
        {"name": "target", "alpha_0": 0.01, "eta": 0.1, "tau": 0.5, "anchor_steps": 2, "alpha_max": 0.5}
    )
    controller.observe(reading(1.0))
    assert controller.metrics()["alpha"] == 0.01 and math.isnan(controller.metrics()["h0"])
    controller.observe(reading(2.0))  # H0 = mean(1, 2) = 1.5; the anchoring readings do not update α
    metrics = controller.metrics()
    assert metrics["h0"] == 1.5 and metrics["target_entropy"] == 0.75 and metrics["alpha"] == 0.01
    assert metrics["anchored"] == 1.0
    controller.observe(reading(0.25))  # α ← 0.01 + 0.1·(0.75 − 0.25) = 0.06
    assert controller.metrics()["alpha"] == pytest.approx(0.06)
    controller.observe(reading(1.75))  # α ← clip(0.06 + 0.1·(0.75 − 1.75)) = 0 (alpha_min)
    assert controller.metrics()["alpha"] == 0.0
    controller.observe(reading(0.55))  # from 0 the additive rule keeps working: 0.1·0.2 = 0.02
    assert controller.metrics()["alpha"] == pytest.approx(0.02)
    assert torch.allclose(controller.plan(outcome(0.0, 1.0)).coef, torch.tensor([0.02, 0.02]))


def test_absolute_anchor_updates_from_the_first_reading() -> None:
    controller = create_controller(
        {"name": "target", "anchor": "absolute", "target_entropy": 0.5, "eta": 0.01, "alpha_0": 0.01}
    )
    controller.observe(reading(0.3))
    metrics = controller.metrics()
    assert metrics["target_entropy"] == 0.5 and metrics["h0"] == 0.3  # H0 still measured, for logs
    assert metrics["alpha"] == pytest.approx(0.01 + 0.01 * 0.2)


def test_aer_threshold_and_linear_allocation() -> None:
    threshold = create_controller({"name": "aer", "alpha_0": 0.01, "rho": 0.5})
    coef = threshold.plan(outcome(0.0, 0.5, 0.625, 1.0)).coef
    assert torch.equal(coef, torch.tensor([0.01, 0.01, 0.0, 0.0]))
    linear = create_controller({"name": "aer", "alpha_0": 0.01, "allocation": "linear"})
    coef = linear.plan(outcome(0.0, 0.25, 1.0)).coef
    assert torch.allclose(coef, torch.tensor([0.01, 0.0075, 0.0]))


def test_aer_treats_non_finite_accuracy_as_hard_and_stays_finite() -> None:
    controller = create_controller({"name": "aer", "alpha_0": 0.01, "allocation": "linear"})
    coef = controller.plan(outcome(float("nan"), float("inf"), -3.0)).coef
    assert torch.isfinite(coef).all()
    assert coef.tolist() == pytest.approx([0.01, 0.0, 0.01])


def test_sign_rule_steps_by_delta() -> None:
    step = dict(rule="sign", eta=0.0, delta=0.001, alpha_min=0.0, alpha_max=0.1)
    assert updated_alpha(0.005, 0.3, **step) == pytest.approx(0.006)
    assert updated_alpha(0.005, -1e9, **step) == pytest.approx(0.004)
    assert updated_alpha(0.0005, -0.1, **step) == 0.0
    assert updated_alpha(0.005, 0.0, **step) == 0.005


def test_log_rule_is_multiplicative_and_never_sticks_at_zero() -> None:
    step = dict(rule="log", eta=1.0, delta=0.0, alpha_min=0.0, alpha_max=1.0)
    assert updated_alpha(0.01, 0.5, **step) == pytest.approx(0.01 * math.exp(0.5))
    # α = 0 is below the log rule's floor: an entropy deficit lifts it to at least the floor ...
    assert updated_alpha(0.0, 0.5, **step) == pytest.approx(LOG_ALPHA_FLOOR * math.exp(0.5))
    # ... and a surplus never raises it.
    assert updated_alpha(0.0, -0.5, **step) == 0.0
    assert updated_alpha(1e-3, -1e30, **step) == LOG_ALPHA_FLOOR
    assert updated_alpha(1e-3, 1e30, **step) == 1.0


def test_controller_with_log_rule_recovers_from_its_floor() -> None:
    controller = create_controller(
        {
            "name": "aer",
            "update": "log",
            "anchor": "absolute",
            "target_entropy": 0.5,
            "alpha_0": 0.0,
            "difficulty_aware": False,
        }
    )
    for _ in range(50):
        controller.observe(reading(0.1))
    assert controller.metrics()["alpha"] > 1e-3  # grew multiplicatively from the floor


def test_ignored_readings_leave_state_unchanged_and_are_counted() -> None:
    controller = create_controller({"name": "aer", "anchor": "absolute", "target_entropy": 0.5})
    before = controller.state_dict()
    for bad in (reading(float("nan")), reading(float("inf")), reading(-1.0), reading(0.3, tokens=0)):
        controller.observe(bad)
    after = controller.state_dict()
    assert after.pop("readings_ignored") == 4
    before.pop("readings_ignored")
    assert after == before


def test_dynamic_off_keeps_alpha_0() -> None:
    controller = create_controller({"name": "aer", "dynamic": False, "alpha_0": 0.02})
    for value in (1.0, 0.1, 0.1, 3.0):
        controller.observe(reading(value))
    assert controller.metrics()["alpha"] == 0.02
    assert controller.metrics()["target_entropy"] == pytest.approx(0.4)


@pytest.mark.parametrize("name", ["fixed", "clip_higher", "target", "aer"])
def test_load_state_dict_names_missing_keys(name: str) -> None:
    controller = create_controller(name)
    with pytest.raises(ValueError, match="load_state_dict: state is missing .*steps_observed"):
        controller.load_state_dict({"last_entropy": None})


def test_resume_with_narrower_bounds_clamps_alpha() -> None:
    wide = create_controller({"name": "aer", "alpha_max": 0.5, "alpha_0": 0.4})
    narrow = create_controller({"name": "aer", "alpha_max": 0.1, "alpha_0": 0.05})
    narrow.load_state_dict(wide.state_dict())
    assert narrow.metrics()["alpha"] == 0.1


def test_relative_rule_one_step_by_hand() -> None:
    from entropyctl.controllers.target import relative_error, relative_step

    assert relative_error(0.4, 0.0) == 1.0 and relative_error(0.4, 0.4) == 0.0
    assert relative_error(0.4, 1.2) == pytest.approx(-2.0)
    assert relative_error(0.0, 0.3) == -1.0 and relative_error(0.0, 0.0) == 0.0
    assert relative_step(0.01, 0.5, step=0.1, alpha_min=1e-5, alpha_max=1.0) == pytest.approx(
        0.01 * math.exp(0.05)
    )
    assert relative_step(0.01, -1e9, step=0.1, alpha_min=1e-5, alpha_max=1.0) == 1e-5  # clipped: anti-windup
    assert relative_step(0.5, 1e9, step=0.1, alpha_min=1e-5, alpha_max=1.0) == 1.0
    assert relative_step(0.01, math.nan, step=0.1, alpha_min=1e-5, alpha_max=1.0) == 0.01
    # the controller: H0 = 1 anchors H* = 0.4; then H = 0.2 twice with smoothing 0.5, κ = 0.1, κ_p = 1
    controller = create_controller(
        {"name": "target", "update": {"step": 0.1, "proportional": 1.0, "smoothing": 0.5}}
    )
    controller.observe(EntropyReading(mean_entropy=1.0, tokens=10, step=0))
    assert controller.metrics()["alpha"] == 0.005  # anchoring: α stays α_0
    controller.observe(EntropyReading(mean_entropy=0.2, tokens=10, step=1))
    smoothed = 0.5 * 1.0 + 0.5 * 0.2  # 0.6 > H*: e = -0.5
    integral = 0.005 * math.exp(0.1 * (0.4 - smoothed) / 0.4)
    assert controller.state_dict()["integral"] == pytest.approx(integral)
    assert controller.metrics()["alpha"] == pytest.approx(integral * math.exp(1.0 * (0.4 - smoothed) / 0.4))
    controller.observe(EntropyReading(mean_entropy=0.2, tokens=10, step=2))
    smoothed = 0.5 * smoothed + 0.5 * 0.2  # 0.4: on target, e = 0
    assert controller.state_dict()["integral"] == pytest.approx(integral)
    assert controller.metrics()["alpha"] == pytest.approx(integral)


def test_relative_error_is_clipped_at_minus_one() -> None:
    """An entropy far above H* moves log α by at most κ (+ κ_p) per step, as far below does."""
    controller = create_controller(
        {"name": "target", "update": {"step": 0.1, "proportional": 1.0, "smoothing": 0.0}}
    )
    controller.observe(EntropyReading(mean_entropy=1.0, tokens=10, step=0))  # H* = 0.4
    controller.observe(EntropyReading(mean_entropy=2.0, tokens=10, step=1))  # e = -4 unclipped
    integral = 0.005 * math.exp(-0.1)
    assert controller.state_dict()["integral"] == pytest.approx(integral)
    assert controller.metrics()["alpha"] == pytest.approx(integral * math.exp(-1.0))
    controller.observe(EntropyReading(mean_entropy=0.0, tokens=10, step=2))  # e = +1, the other side
    assert controller.state_dict()["integral"] == pytest.approx(integral * math.exp(0.1))


def test_a_first_release_state_dict_loads() -> None:
    """Checkpoints of the first release hold no smoothed reading or integral: they load, as None."""
    controller = create_controller("aer")
    state = {k: v for k, v in controller.state_dict().items() if k not in ("smoothed_entropy", "integral")}
    controller.load_state_dict({**state, "alpha": 0.02, "h0": 0.5})
    assert controller.metrics()["alpha"] == 0.02 and controller.state_dict()["integral"] is None


def _hold_controller(hold: bool) -> object:
    return create_controller(
        {
            "name": "aer",
            "update": {"step": 0.1, "proportional": 1.0, "smoothing": 0.0, "hold_on_approach": hold},
        }
    )


def test_hold_on_approach_keeps_the_integral_at_alpha_0_while_the_entropy_falls() -> None:
    """A first approach from H0 = 1 toward H* = 0.4: falling readings (the 20-step average below the
    100-step one) leave the integral at α_0 with the hold and wind it down without it."""
    held, plain = _hold_controller(True), _hold_controller(False)
    readings = [1.0 - 0.004 * t for t in range(100)]  # 1.0 → 0.604: still above 1.2·H* = 0.48
    for t, h in enumerate(readings):
        for controller in (held, plain):
            controller.observe(EntropyReading(mean_entropy=h, tokens=10, step=t))  # type: ignore[attr-defined]
    state = held.state_dict()  # type: ignore[attr-defined]
    assert state["trend_fast"] < state["trend_slow"] and not state["approached"]
    assert state["integral"] == 0.005
    assert plain.state_dict()["integral"] < 0.005 * math.exp(-0.1 * 0.5 * 50)  # type: ignore[attr-defined]
    # the proportional part still acts: α = I·exp(κ_p·e) < α_0 above the target
    assert held.metrics()["alpha"] < 0.005  # type: ignore[attr-defined]


def test_hold_on_approach_releases_on_a_stall_and_after_the_first_approach() -> None:
    """The hold ends when the entropy stops falling above the target (the bonus may be what holds it
    up) and, for good, once the 20-step average has come within 20 % above H*."""
    stall = _hold_controller(True)
    for t in range(400):  # H0 = 1, then a flat 0.9: both averages settle on it, F_t first
        stall.observe(EntropyReading(mean_entropy=1.0 if t == 0 else 0.9, tokens=10, step=t))  # type: ignore[attr-defined]
    assert stall.state_dict()["integral"] == 1e-5  # type: ignore[attr-defined]  # released: down to the floor

    approach = _hold_controller(True)
    t = 0
    for h in [1.0] + [0.4] * 60:  # falls to H*: F_t reaches 1.2·H* within a few tens of steps
        approach.observe(EntropyReading(mean_entropy=h, tokens=10, step=t))  # type: ignore[attr-defined]
        t += 1
    assert approach.state_dict()["approached"]  # type: ignore[attr-defined]
    integral = approach.state_dict()["integral"]  # type: ignore[attr-defined]
    for _ in range(20):  # back above the target and falling: no hold any more
        approach.observe(EntropyReading(mean_entropy=0.8 - 0.001 * t, tokens=10, step=t))  # type: ignore[attr-defined]
        t += 1
    assert approach.state_dict()["integral"] < integral  # type: ignore[attr-defined]


def test_hold_state_round_trips_and_older_checkpoints_load() -> None:
    controller = _hold_controller(True)
    for t in range(30):
        controller.observe(EntropyReading(mean_entropy=1.0 - 0.01 * t, tokens=10, step=t))  # type: ignore[attr-defined]
    state = controller.state_dict()  # type: ignore[attr-defined]
    restored = _hold_controller(True)
    restored.load_state_dict(state)  # type: ignore[attr-defined]
    assert restored.state_dict() == state  # type: ignore[attr-defined]
    older = {k: v for k, v in state.items() if k not in ("trend_fast", "trend_slow", "approached")}
    fresh = _hold_controller(True)
    fresh.load_state_dict(older)  # type: ignore[attr-defined]
    assert fresh.state_dict()["trend_fast"] is None and fresh.state_dict()["approached"] is False  # type: ignore[attr-defined]


def test_release_band_keeps_the_integral_within_the_band_above_the_target() -> None:
    """``release_band``: an entropy within that fraction above H* does not lower the integral (the
    proportional part still acts); above the band, and below H*, the plain rule moves it."""
    controller = create_controller(
        {"name": "aer", "update": {"step": 0.1, "proportional": 1.0, "smoothing": 0.0, "release_band": 0.2}}
    )
    controller.observe(EntropyReading(mean_entropy=1.0, tokens=10, step=0))  # H* = 0.4
    controller.observe(EntropyReading(mean_entropy=0.46, tokens=10, step=1))  # e = -0.15: in the band
    assert controller.state_dict()["integral"] == 0.005
    assert controller.metrics()["alpha"] == pytest.approx(0.005 * math.exp(-0.15))
    controller.observe(EntropyReading(mean_entropy=0.6, tokens=10, step=2))  # e = -0.5: above it
    assert controller.state_dict()["integral"] == pytest.approx(0.005 * math.exp(-0.05))
    controller.observe(EntropyReading(mean_entropy=0.3, tokens=10, step=3))  # e = +0.25: below H*
    assert controller.state_dict()["integral"] == pytest.approx(0.005 * math.exp(-0.05 + 0.025))


def test_lower_ratio_lowers_the_integral_more_slowly_than_it_raises_it() -> None:
    """``lower_ratio``: above H* the integral moves by κ·lower_ratio·e, below it by κ·e (the
    proportional part is symmetric)."""
    controller = create_controller(
        {"name": "aer", "update": {"step": 0.1, "proportional": 1.0, "smoothing": 0.0, "lower_ratio": 0.25}}
    )
    controller.observe(EntropyReading(mean_entropy=1.0, tokens=10, step=0))  # H* = 0.4
    controller.observe(EntropyReading(mean_entropy=0.6, tokens=10, step=1))  # e = -0.5
    integral = 0.005 * math.exp(-0.1 * 0.25 * 0.5)
    assert controller.state_dict()["integral"] == pytest.approx(integral)
    assert controller.metrics()["alpha"] == pytest.approx(integral * math.exp(-0.5))
    controller.observe(EntropyReading(mean_entropy=0.2, tokens=10, step=2))  # e = +0.5: full step up
    assert controller.state_dict()["integral"] == pytest.approx(integral * math.exp(0.1 * 0.5))
    with pytest.raises(ValueError, match="lower_ratio"):
        create_controller({"name": "aer", "update": {"lower_ratio": 0.0}})


def test_climb_boost_raises_the_integral_faster_only_below_the_band() -> None:
    """``climb_boost: c, climb_from: e_c``: for e > e_c the integral climbs at κ·(1 + c·(e − e_c));
    within [0, e_c] and above H* the plain step (the proportional part is unchanged)."""
    controller = create_controller(
        {
            "name": "aer",
            "update": {
                "step": 0.1,
                "proportional": 1.0,
                "smoothing": 0.0,
                "climb_boost": 10.0,
                "climb_from": 0.2,
            },
        }
    )
    plain = create_controller({"name": "aer", "update": {"step": 0.1, "proportional": 1.0, "smoothing": 0.0}})
    for c in (controller, plain):
        c.observe(EntropyReading(mean_entropy=1.0, tokens=10, step=0))  # H* = 0.4
    for h in (0.36, 0.6):  # e = +0.1 (in the band), e = -0.5 (above H*): the same as the plain rule
        for c in (controller, plain):
            c.observe(EntropyReading(mean_entropy=h, tokens=10, step=1))
        assert controller.state_dict()["integral"] == pytest.approx(plain.state_dict()["integral"])  # type: ignore[attr-defined]
        assert controller.metrics()["alpha"] == pytest.approx(plain.metrics()["alpha"])
    integral = controller.state_dict()["integral"]  # type: ignore[attr-defined]
    controller.observe(EntropyReading(mean_entropy=0.2, tokens=10, step=2))  # e = +0.5: boosted 1 + 10·0.3
    boosted = integral * math.exp(0.1 * (1.0 + 10.0 * 0.3) * 0.5)
    assert controller.state_dict()["integral"] == pytest.approx(boosted)  # type: ignore[attr-defined]
    assert controller.metrics()["alpha"] == pytest.approx(boosted * math.exp(0.5))
    with pytest.raises(ValueError, match="climb_from"):
        create_controller({"name": "aer", "update": {"climb_from": 1.0}})
    with pytest.raises(ValueError, match="climb_boost"):
        create_controller({"name": "aer", "update": {"climb_boost": -1.0}})


def test_climb_after_boosts_only_a_long_enough_stay_below_the_band() -> None:
    """``climb_after: M``: the boost waits until the smoothed error has been above ``climb_from`` for
    M consecutive readings; a reading back at or below it starts the count again."""
    update = {"step": 0.1, "proportional": 1.0, "smoothing": 0.0, "climb_boost": 10.0, "climb_from": 0.2}
    gated = create_controller({"name": "aer", "update": {**update, "climb_after": 2}})
    plain = create_controller({"name": "aer", "update": {"step": 0.1, "proportional": 1.0, "smoothing": 0.0}})
    for c in (gated, plain):
        c.observe(EntropyReading(mean_entropy=1.0, tokens=10, step=0))  # H* = 0.4

    # e = +0.5 twice, back to e = +0.1, e = +0.5 twice: never M + 1 in a row, so the plain steps
    for h in (0.2, 0.2, 0.36, 0.2, 0.2):
        for c in (gated, plain):
            c.observe(EntropyReading(mean_entropy=h, tokens=10, step=1))
        assert integral(gated) == pytest.approx(integral(plain))
    before = integral(gated)
    gated.observe(EntropyReading(mean_entropy=0.2, tokens=10, step=2))  # the third in a row: boosted
    assert integral(gated) == pytest.approx(before * math.exp(0.1 * (1.0 + 10.0 * 0.3) * 0.5))
    # the count is part of the state: a restored controller continues it
    restored = create_controller({"name": "aer", "update": {**update, "climb_after": 2}})
    restored.load_state_dict(gated.state_dict())
    assert restored.state_dict() == gated.state_dict()
    with pytest.raises(ValueError, match="climb_after"):
        create_controller({"name": "aer", "update": {"climb_after": -1}})


def test_rearm_at_target_raises_the_integral_to_alpha_0_once_when_the_entropy_first_reaches_h_star() -> None:
    """``rearm_at_target``: the approach from above winds the integral down as before; at the first
    reading with e ≥ 0 it is raised to α_0 (not lowered if it is above), and never again."""
    update = {"step": 0.5, "proportional": 1.0, "smoothing": 0.0, "alpha_min": 1e-5}
    rearm = create_controller(
        {"name": "aer", "alpha_0": 0.005, "update": {**update, "rearm_at_target": True}}
    )
    plain = create_controller({"name": "aer", "alpha_0": 0.005, "update": update})

    for c in (rearm, plain):
        c.observe(EntropyReading(mean_entropy=1.0, tokens=10, step=0))  # H* = 0.4
    for _ in range(10):  # e = -1 (clipped): the integral winds down by e^-0.5 a reading on both
        for c in (rearm, plain):
            c.observe(EntropyReading(mean_entropy=1.0, tokens=10, step=1))
        assert integral(rearm) == pytest.approx(integral(plain))
    wound = integral(plain)
    assert wound == pytest.approx(0.005 * math.exp(-5.0))
    for c in (rearm, plain):
        c.observe(EntropyReading(mean_entropy=0.3, tokens=10, step=2))  # e = +0.25: H* reached
    assert integral(plain) == pytest.approx(wound * math.exp(0.5 * 0.25))
    assert integral(rearm) == pytest.approx(0.005 * math.exp(0.5 * 0.25))  # from α_0, not from the floor
    assert rearm.metrics()["alpha"] == pytest.approx(integral(rearm) * math.exp(0.25))
    # once: a second approach from above and a second crossing step from where the loop is
    for h in (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0):
        rearm.observe(EntropyReading(mean_entropy=h, tokens=10, step=3))
    before = integral(rearm)
    assert before < 0.005
    rearm.observe(EntropyReading(mean_entropy=0.3, tokens=10, step=4))
    assert integral(rearm) == pytest.approx(before * math.exp(0.5 * 0.25))
    # whether it has acted is part of the state, and a checkpoint without it reads as not yet
    restored = create_controller({"name": "aer", "update": {**update, "rearm_at_target": True}})
    restored.load_state_dict(rearm.state_dict())
    assert restored.state_dict() == rearm.state_dict()
    old = {k: v for k, v in rearm.state_dict().items() if k != "rearmed"}
    restored.load_state_dict(old)
    assert restored.state_dict()["rearmed"] is False  # type: ignore[index]


def test_rearm_alpha_sets_the_level_the_rearm_raises_the_integral_to() -> None:
    """``rearm_alpha``: the same rearm, to the given α instead of α_0; it needs the rearm on and
    lies within the bounds."""
    update = {"step": 0.5, "proportional": 1.0, "smoothing": 0.0, "alpha_min": 1e-5, "rearm_at_target": True}
    controllers = {
        level: create_controller(
            {"name": "aer", "alpha_0": 0.005, "update": {**update, "rearm_alpha": level}}
        )
        for level in (5e-4, 1e-5, None)
    }
    for h in [1.0] * 11 + [0.3]:  # anchor, wind down to 0.005·e^-5 ≈ 3.4e-5, then e = +0.25
        for c in controllers.values():
            c.observe(EntropyReading(mean_entropy=h, tokens=10, step=0))
    integrals = {level: float(c.state_dict()["integral"]) for level, c in controllers.items()}
    assert integrals[5e-4] == pytest.approx(5e-4 * math.exp(0.5 * 0.25))
    assert integrals[None] == pytest.approx(0.005 * math.exp(0.5 * 0.25))  # None: α_0, as before
    # a level below where the integral stands does not lower it
    assert integrals[1e-5] == pytest.approx(0.005 * math.exp(-5.0) * math.exp(0.5 * 0.25))
    with pytest.raises(ValueError, match="rearm_alpha: acts only with rearm_at_target"):
        create_controller({"name": "aer", "update": {"rearm_alpha": 5e-4}})
    with pytest.raises(ValueError, match="rearm_alpha: must be within"):
        create_controller({"name": "aer", "update": {"rearm_at_target": True, "rearm_alpha": 2.0}})


def test_conditional_integration_holds_the_integral_while_the_entropy_moves_toward_the_target() -> None:
    """``conditional``: the integral moves only while H̃ is not on the target's side of the 20-step
    average F_t — above H* and rising, or below it and falling; the proportional part always acts."""
    update = {"step": 0.1, "proportional": 1.0, "smoothing": 0.0}
    cond = create_controller({"name": "aer", "alpha_0": 0.005, "update": {**update, "conditional": True}})
    plain = create_controller({"name": "aer", "alpha_0": 0.005, "update": update})

    def observe(h: float) -> None:
        for c in (cond, plain):
            c.observe(EntropyReading(mean_entropy=h, tokens=10, step=0))

    observe(1.0)  # H0 = 1, H* = 0.4, F = 1
    observe(0.9)  # above (e clipped to −1) and below F: falling toward H* → held
    assert integral(cond) == 0.005 and integral(plain) == pytest.approx(0.005 * math.exp(-0.1))
    assert cond.metrics()["alpha"] == pytest.approx(0.005 * math.exp(-1.0))  # κ_p·e still acts
    observe(1.2)  # above and above F: rising away → lowered as the plain rule does
    assert integral(cond) == pytest.approx(0.005 * math.exp(-0.1))
    observe(0.3)  # below (e = +0.25) and below F: falling away → raised
    assert integral(cond) == pytest.approx(0.005 * math.exp(-0.1 + 0.025))
    for _ in range(100):  # F follows the entropy down to 0.2; both rules climb here (falling, then flat)
        observe(0.2)
    held = integral(cond)
    observe(0.35)  # below H* (e = 0.125) but above F: rising toward it → held
    assert integral(cond) == held
    assert cond.metrics()["alpha"] == pytest.approx(held * math.exp(0.125))
    # no state of its own: a checkpoint round-trips as before
    restored = create_controller({"name": "aer", "update": {**update, "conditional": True}})
    restored.load_state_dict(cond.state_dict())
    assert restored.state_dict() == cond.state_dict()


def test_linear_term_adds_lambda_alpha0_error_to_the_integral_after_the_log_step() -> None:
    """``linear`` = λ: I_{t+1} = clip(I_t·exp(κ·e) + λ·α_0·e); far below α_0 the linear part is the move
    (a climb from the floor at a linear pace), near α_0 both act, and the clip still bounds it."""
    update = {"step": 0.1, "proportional": 0.0, "smoothing": 0.0}
    hybrid = create_controller({"name": "aer", "alpha_0": 0.005, "update": {**update, "linear": 0.5}})
    plain = create_controller({"name": "aer", "alpha_0": 0.005, "update": update})

    def observe(h: float) -> None:
        for c in (hybrid, plain):
            c.observe(EntropyReading(mean_entropy=h, tokens=10, step=0))

    observe(1.0)  # H0 = 1, H* = 0.4
    observe(0.3)  # e = +0.25
    assert integral(plain) == pytest.approx(0.005 * math.exp(0.025))
    assert integral(hybrid) == pytest.approx(0.005 * math.exp(0.025) + 0.5 * 0.005 * 0.25)
    for _ in range(20):  # far above H* (e = −1): the linear part takes the integral to the floor fast
        observe(2.0)
    assert integral(hybrid) == pytest.approx(1e-5)  # the clip at α_min
    assert integral(plain) == pytest.approx(0.005 * math.exp(0.025 - 2.0))  # 20 log steps: still ~1e-3
    observe(0.3)  # from the floor: the move is λ·α_0·e (the log part adds 1e-5·(e^0.025 − 1))
    assert integral(hybrid) == pytest.approx(1e-5 * math.exp(0.025) + 0.5 * 0.005 * 0.25)
    assert integral(hybrid) > 60 * 1e-5  # one step from the floor: 1e-5 → ~6e-4 (the log step: ×1.025)
    assert hybrid.metrics()["alpha"] == integral(hybrid)  # κ_p = 0: α is the integral


def test_linear_term_on_the_climb_only_leaves_the_descent_to_the_log_step() -> None:
    """``linear_on: climb``: the λ·α_0·e term acts only while e > 0; above H* the step is the plain one."""
    update = {"step": 0.1, "proportional": 0.0, "smoothing": 0.0, "linear": 0.5, "linear_on": "climb"}
    climb = create_controller({"name": "aer", "alpha_0": 0.005, "update": update})
    climb.observe(EntropyReading(mean_entropy=1.0, tokens=10, step=0))  # H0 = 1, H* = 0.4
    climb.observe(EntropyReading(mean_entropy=0.6, tokens=10, step=0))  # e = −0.5: log step only
    assert integral(climb) == pytest.approx(0.005 * math.exp(-0.05))
    climb.observe(EntropyReading(mean_entropy=0.3, tokens=10, step=0))  # e = +0.25: both
    assert integral(climb) == pytest.approx(0.005 * math.exp(-0.05 + 0.025) + 0.5 * 0.005 * 0.25)


def test_linear_term_on_the_low_climb_acts_only_below_alpha_0() -> None:
    """``linear_on: low_climb``: the λ·α_0·e term acts while e > 0 and the integral is below α_0; at or
    above α_0, and on the descent, the step is the plain relative rule's."""
    update = {"step": 0.1, "proportional": 0.0, "smoothing": 0.0, "linear": 0.5}
    low = create_controller({"name": "aer", "alpha_0": 0.005, "update": {**update, "linear_on": "low_climb"}})
    plain = create_controller(
        {"name": "aer", "alpha_0": 0.005, "update": {"step": 0.1, "proportional": 0.0, "smoothing": 0.0}}
    )

    def observe(h: float) -> None:
        for c in (low, plain):
            c.observe(EntropyReading(mean_entropy=h, tokens=10, step=0))

    observe(1.0)  # H0 = 1, H* = 0.4
    observe(0.3)  # e = +0.25 with the integral at α_0 (not below it): the plain step
    assert integral(low) == integral(plain) == pytest.approx(0.005 * math.exp(0.025))
    observe(0.8)  # e = −1: the descent is the plain rule's
    assert integral(low) == integral(plain) == pytest.approx(0.005 * math.exp(0.025 - 0.1))
    below = integral(low)
    assert below < 0.005
    observe(0.3)  # e = +0.25 below α_0: the log step and λ·α_0·e
    assert integral(low) == pytest.approx(below * math.exp(0.025) + 0.5 * 0.005 * 0.25)
    assert integral(plain) == pytest.approx(below * math.exp(0.025))
