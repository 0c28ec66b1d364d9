"""Property-based tests of the robustness contract (design.md §3) for every registered controller,
plus the monotonicity, allocation and ablation properties of ``target`` and ``aer``."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from entropyctl import EntropyReading, GroupOutcome, available_controllers, create_controller
from entropyctl.config import ControllerConfig
from entropyctl.controllers.target import relative_error

PROPERTY_SETTINGS = settings(max_examples=60, deadline=None)

hostile_entropy = st.one_of(
    st.floats(min_value=0.0, max_value=5.0),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1e30, 1e-30, -1.0, 1e300]),
)
readings = st.lists(
    st.builds(
        lambda h, tokens, step: EntropyReading(mean_entropy=h, tokens=tokens, step=step),
        hostile_entropy,
        st.sampled_from([0, 1, 1000, 10**9, -5]),
        st.integers(0, 10_000),
    ),
    max_size=25,
)
accuracies = st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=12)


UPDATE_RULES = ["relative", "additive", "sign", "log"]


@st.composite
def update_configs(draw: st.DrawFn, rule: str | None = None) -> dict[str, Any]:
    rule = rule or draw(st.sampled_from(UPDATE_RULES))
    low = 1e-6 if rule == "relative" else 0.0
    alpha_min, alpha_max = sorted(draw(st.lists(st.floats(low, 0.2), min_size=2, max_size=2)))
    update: dict[str, Any] = {"rule": rule, "alpha_min": alpha_min, "alpha_max": alpha_max}
    if rule == "relative":
        update.update(
            step=draw(st.floats(1e-3, 1.0)),
            proportional=draw(st.floats(0.0, 5.0)),
            smoothing=draw(st.floats(0.0, 0.99)),
            hold_on_approach=draw(st.booleans()),
            release_band=draw(st.sampled_from([0.0, 0.2]) | st.floats(0.0, 1.0)),
            lower_ratio=draw(st.sampled_from([1.0, 0.25]) | st.floats(1e-3, 1.0)),
            climb_boost=draw(st.sampled_from([0.0, 10.0]) | st.floats(0.0, 100.0)),
            climb_from=draw(st.sampled_from([0.0, 0.2]) | st.floats(0.0, 0.99)),
            climb_after=draw(st.sampled_from([0, 25]) | st.integers(0, 1000)),
            rearm_at_target=draw(st.booleans()),
            conditional=draw(st.booleans()),
            linear=draw(st.sampled_from([0.0, 0.05]) | st.floats(0.0, 10.0)),
            linear_on=draw(st.sampled_from(["both", "climb", "low_climb"])),
        )
        # options that shape another only with it (refused alone), conditional only below TREND_FAST
        if update["climb_boost"] == 0.0:
            update.update(climb_from=0.0, climb_after=0)
        if update["linear"] == 0.0:
            update["linear_on"] = "both"
        if update["smoothing"] >= 0.95:
            update["conditional"] = False
        if update["rearm_at_target"] and draw(st.booleans()):
            update["rearm_alpha"] = draw(st.floats(alpha_min, alpha_max))
    elif rule in ("additive", "log"):
        update["eta"] = draw(st.floats(0.0, 5.0, exclude_min=True))
    else:
        update["delta"] = draw(st.floats(0.0, 0.05, exclude_min=True))
    return update


@st.composite
def adaptive_configs(draw: st.DrawFn, name: str, rule: str | None = None) -> dict[str, Any]:
    update = draw(update_configs(rule))
    if name == "aer" and rule is None and draw(st.integers(0, 4)) == 0:
        update = {"rule": "none"}
    low, high = (update["alpha_min"], update["alpha_max"]) if "alpha_min" in update else (0.0, 0.2)
    anchor = draw(
        st.one_of(
            st.builds(
                lambda t, n: {"mode": "initial", "tau": t, "steps": n},
                st.floats(0.01, 1.0),
                st.integers(1, 3),
            ),
            st.builds(lambda h: {"mode": "absolute", "target_entropy": h}, st.floats(0.0, 3.0)),
        )
    )
    config: dict[str, Any] = {
        "name": name,
        "alpha_0": draw(st.floats(low, high)),
        "update": update,
        "anchor": anchor,
    }
    if name == "aer":
        config["allocation"] = draw(
            st.one_of(
                st.builds(lambda a: {"rule": "threshold", "accuracy_threshold": a}, st.floats(0.0, 1.0)),
                st.just({"rule": "linear"}),
                st.just({"rule": "uniform"}),
            )
        )
    return config


def configs_for(name: str) -> st.SearchStrategy[dict[str, Any]]:
    if name in ("target", "aer"):
        return adaptive_configs(name)
    if name == "fixed":
        return st.builds(lambda a: {"name": "fixed", "alpha": a}, st.floats(0.0, 1.0))
    return st.just({"name": name})  # clip_higher and plugins: their defaults


def coefficient_bounds(config: ControllerConfig) -> tuple[float, float]:
    if config.name == "fixed":
        return config.alpha, config.alpha  # type: ignore[attr-defined]
    if config.name == "clip_higher":
        return 0.0, 0.0
    if hasattr(config, "alpha_bounds"):
        return 0.0, config.alpha_bounds[1]
    return 0.0, math.inf


def outcome_of(accuracy: list[float], step: int = 0) -> GroupOutcome:
    return GroupOutcome(accuracy=torch.tensor(accuracy, dtype=torch.float32), group_size=8, step=step)


def same_metrics(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all((math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a)


ALL_CONTROLLERS = sorted(available_controllers())


def test_the_builtins_are_registered() -> None:
    assert {"fixed", "clip_higher", "target", "aer"} <= set(ALL_CONTROLLERS)


@pytest.mark.parametrize("name", ALL_CONTROLLERS)
def test_coefficients_finite_and_in_bounds_for_any_readings(name: str) -> None:
    @PROPERTY_SETTINGS
    @given(config=configs_for(name), sequence=readings, accuracy=accuracies)
    def check(config: dict[str, Any], sequence: list[EntropyReading], accuracy: list[float]) -> None:
        controller = create_controller(config)
        low, high = coefficient_bounds(controller.config)
        ignored = 0
        for item in sequence:
            controller.observe(item)
            usable = math.isfinite(item.mean_entropy) and item.mean_entropy >= 0 and item.tokens > 0
            ignored += not usable
            plan = controller.plan(outcome_of(accuracy))
            assert plan.coef.shape == (len(accuracy),)
            assert torch.isfinite(plan.coef).all()
            assert (plan.coef >= 0).all() and (plan.coef <= high).all()
            if name == "fixed":
                assert (plan.coef == torch.tensor(low, dtype=torch.float32)).all()
            assert math.isfinite(plan.clip_low) and math.isfinite(plan.clip_high)
            metrics = controller.metrics()
            for key in ("alpha", "target_entropy", "h0", "last_entropy", "readings_ignored"):
                assert key in metrics
            assert math.isfinite(metrics["alpha"])
            if hasattr(controller.config, "alpha_bounds"):
                alpha_min, alpha_max = controller.config.alpha_bounds
                assert alpha_min <= metrics["alpha"] <= alpha_max
        if name in ("fixed", "clip_higher", "target", "aer"):
            assert controller.metrics()["readings_ignored"] == ignored

    check()


@pytest.mark.parametrize("name", ALL_CONTROLLERS)
def test_plan_does_not_change_state(name: str) -> None:
    @PROPERTY_SETTINGS
    @given(config=configs_for(name), sequence=readings, accuracy=accuracies)
    def check(config: dict[str, Any], sequence: list[EntropyReading], accuracy: list[float]) -> None:
        controller = create_controller(config)
        for item in sequence:
            controller.observe(item)
        state, metrics = controller.state_dict(), controller.metrics()
        first = controller.plan(outcome_of(accuracy))
        second = controller.plan(outcome_of(accuracy))
        assert controller.state_dict() == state
        assert same_metrics(controller.metrics(), metrics)
        assert torch.equal(first.coef, second.coef)

    check()


@pytest.mark.parametrize("name", ALL_CONTROLLERS)
def test_state_dict_round_trip_gives_identical_future(name: str) -> None:
    @PROPERTY_SETTINGS
    @given(config=configs_for(name), past=readings, future=readings, accuracy=accuracies)
    def check(
        config: dict[str, Any],
        past: list[EntropyReading],
        future: list[EntropyReading],
        accuracy: list[float],
    ) -> None:
        original = create_controller(config)
        for item in past:
            original.observe(item)
        saved = json.loads(json.dumps(original.state_dict(), allow_nan=False))
        restored = create_controller(config)
        restored.load_state_dict(saved)
        assert same_metrics(restored.metrics(), original.metrics())
        for item in future:
            a, b = original.plan(outcome_of(accuracy)), restored.plan(outcome_of(accuracy))
            assert torch.equal(a.coef, b.coef) and (a.clip_low, a.clip_high) == (b.clip_low, b.clip_high)
            original.observe(item)
            restored.observe(item)
            assert same_metrics(restored.metrics(), original.metrics())
        assert restored.state_dict() == original.state_dict()

    check()


@pytest.mark.parametrize("name", ["target", "aer"])
@pytest.mark.parametrize("update", UPDATE_RULES)
@pytest.mark.parametrize("side", ["below", "above"])
def test_alpha_moves_toward_more_entropy_below_target_and_less_above(
    name: str, update: str, side: str
) -> None:
    @PROPERTY_SETTINGS
    @given(
        config=st.data(),
        h0=st.floats(0.05, 4.0),
        fractions=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30),
    )
    def check(config: st.DataObject, h0: float, fractions: list[float]) -> None:
        drawn = config.draw(adaptive_configs(name, update))
        controller = create_controller(drawn)
        if (
            drawn["anchor"]["mode"] == "absolute"
            and drawn["anchor"]["target_entropy"] == 0.0
            and side == "below"
        ):
            return  # nothing is below a zero target
        # the anchoring readings (and, for the smoothed relative rule, enough of them to forget H0)
        for _ in range(drawn["anchor"].get("steps", 1)):
            controller.observe(EntropyReading(mean_entropy=h0, tokens=10, step=0))
        target = controller.metrics()["target_entropy"]
        assert math.isfinite(target)
        # strictly below target: [0, target); strictly above: (target, 2·target + 1]
        values = [
            fraction * target * 0.999 if side == "below" else target + 1e-6 + fraction * (target + 1.0)
            for fraction in fractions
        ]
        smoothed = h0 if update == "relative" else None
        previous = controller.metrics()["alpha"]
        if smoothed is not None and controller.state_dict()["integral"] is not None:
            previous = controller.state_dict()["integral"]  # an absolute target moved it already
        for value in values:
            controller.observe(EntropyReading(mean_entropy=value, tokens=10, step=1))
            alpha = controller.metrics()["alpha"]
            if smoothed is not None:
                # The relative rule acts on the smoothed reading; its integral part moves with the
                # error's sign and the proportional part puts α on the error's side of it.
                beta = drawn["update"]["smoothing"]
                smoothed = beta * smoothed + (1 - beta) * value
                integral = controller.state_dict()["integral"]
                if (smoothed < target) == (side == "below") and smoothed != target:
                    assert integral >= previous if side == "below" else integral <= previous
                    # (exp/log round-off: 1e-12 relative)
                    assert (
                        alpha >= integral * (1 - 1e-12)
                        if side == "below"
                        else alpha <= integral * (1 + 1e-12)
                    )
                previous = integral
                continue
            assert alpha >= previous if side == "below" else alpha <= previous
            previous = alpha

    check()


@PROPERTY_SETTINGS
@given(
    config=adaptive_configs("aer"),
    accuracy=accuracies,
    sequence=readings,
)
def test_allocation_non_increasing_in_accuracy_and_zero_for_easy_prompts(
    config: dict[str, Any], accuracy: list[float], sequence: list[EntropyReading]
) -> None:
    controller = create_controller(config)
    for item in sequence:
        controller.observe(item)
    ordered = sorted(accuracy)
    coef = controller.plan(outcome_of(ordered)).coef
    accuracy_f32 = torch.tensor(ordered, dtype=torch.float32)
    assert (coef[1:] <= coef[:-1]).all()
    if config["allocation"]["rule"] == "threshold":
        threshold = config["allocation"]["accuracy_threshold"]
        assert (coef[accuracy_f32 > threshold] == 0).all()
        assert torch.allclose(coef[accuracy_f32 <= threshold], torch.tensor(controller.metrics()["alpha"]))


@PROPERTY_SETTINGS
@given(config=adaptive_configs("aer"), sequence=readings, accuracy=accuracies)
def test_aer_with_all_switches_off_is_exactly_fixed(
    config: dict[str, Any], sequence: list[EntropyReading], accuracy: list[float]
) -> None:
    config = {
        **config,
        "allocation": {"rule": "uniform"},
        "anchor": {"mode": "absolute", "target_entropy": 0.3},
        "update": {"rule": "none"},
        "clip_low": 0.15,
        "clip_high": 0.3,
    }
    aer = create_controller(config)
    fixed = create_controller(
        {"name": "fixed", "alpha": config["alpha_0"], "clip_low": 0.15, "clip_high": 0.3}
    )
    for item in [*sequence, None]:
        a, f = aer.plan(outcome_of(accuracy)), fixed.plan(outcome_of(accuracy))
        assert torch.equal(a.coef, f.coef) and a.coef.dtype == f.coef.dtype
        assert (a.clip_low, a.clip_high) == (f.clip_low, f.clip_high)
        if item is not None:
            aer.observe(item)
            fixed.observe(item)


@PROPERTY_SETTINGS
@given(config=adaptive_configs("aer"), sequence=readings, accuracy=accuracies)
def test_aer_without_difficulty_is_exactly_target(
    config: dict[str, Any], sequence: list[EntropyReading], accuracy: list[float]
) -> None:
    if config["update"]["rule"] == "none":
        return  # target always moves α_t
    aer = create_controller({**config, "allocation": {"rule": "uniform"}})
    target_config = {k: v for k, v in config.items() if k != "allocation"}
    target = create_controller({**target_config, "name": "target"})
    for item in [*sequence, None]:
        a, t = aer.plan(outcome_of(accuracy)), target.plan(outcome_of(accuracy))
        assert torch.equal(a.coef, t.coef)
        assert (a.clip_low, a.clip_high) == (t.clip_low, t.clip_high)
        assert same_metrics(aer.metrics(), target.metrics())
        if item is not None:
            aer.observe(item)
            target.observe(item)


@PROPERTY_SETTINGS
@given(
    linear=st.floats(0.01, 1.0),
    step=st.floats(1e-3, 0.5),
    level=st.floats(0.0, 0.39),
    above=st.floats(0.41, 3.0),
    steps=st.integers(1, 200),
)
def test_the_linear_climb_is_at_least_linear_and_the_descent_is_the_log_steps(
    linear: float, step: float, level: float, above: float, steps: int
) -> None:
    """``linear_on: climb``: with e < 0 the integral is the plain relative rule's, reading for reading;
    then, with a constant error e > 0 from wherever that left it (I_0), after n readings it is at least
    I_0 + n·λ·α_0·e (the linear part alone: the log step only adds) and at least I_0·exp(n·κ·e), up to
    α_max."""
    update = {"step": step, "proportional": 0.0, "smoothing": 0.0, "alpha_max": 1.0}
    climb = create_controller(
        {"name": "aer", "alpha_0": 0.005, "update": {**update, "linear": linear, "linear_on": "climb"}}
    )
    plain = create_controller({"name": "aer", "alpha_0": 0.005, "update": update})
    for c in (climb, plain):
        c.observe(EntropyReading(mean_entropy=1.0, tokens=10, step=0))  # H0 = 1, H* = 0.4
    for _ in range(steps):  # above H*: the descent, identical
        for c in (climb, plain):
            c.observe(EntropyReading(mean_entropy=above, tokens=10, step=1))
        assert climb.state_dict()["integral"] == plain.state_dict()["integral"]
    start = float(climb.state_dict()["integral"])
    error = (0.4 - level) / 0.4
    for _ in range(steps):  # below H*: the climb
        climb.observe(EntropyReading(mean_entropy=level, tokens=10, step=2))
    reached = float(climb.state_dict()["integral"])
    # round-off: each step's exp/log is exact to ~1e-15 relative; 1e-12 covers 200 of them
    assert reached >= min(start + steps * linear * 0.005 * error, 1.0) * (1 - 1e-12)
    assert reached >= min(start * math.exp(steps * step * error), 1.0) * (1 - 1e-12)


@PROPERTY_SETTINGS
@given(
    linear=st.floats(0.01, 1.0),
    step=st.floats(1e-3, 0.5),
    smoothing=st.floats(0.0, 0.95),
    readings=st.lists(st.floats(0.05, 3.0), min_size=1, max_size=120),
)
def test_the_low_climb_term_acts_only_on_a_climb_below_alpha_0(
    linear: float, step: float, smoothing: float, readings: list[float]
) -> None:
    """``linear_on: low_climb``, reading by reading from the same state: where the smoothed reading is
    at or above H* (e ≤ 0) or the integral is at or above α_0, the step is the plain relative rule's,
    exactly; otherwise it is the plain step plus λ·α_0·e, clipped to the bounds."""
    update = {"step": step, "proportional": 0.0, "smoothing": smoothing, "alpha_max": 1.0}
    low = create_controller(
        {"name": "aer", "alpha_0": 0.005, "update": {**update, "linear": linear, "linear_on": "low_climb"}}
    )
    low.observe(EntropyReading(mean_entropy=1.0, tokens=10, step=0))  # H0 = 1, H* = 0.4
    for h in readings:
        before = low.state_dict()
        plain = create_controller({"name": "aer", "alpha_0": 0.005, "update": update})
        plain.load_state_dict(before)  # the plain rule from the same state (the same smoothed reading)
        low.observe(EntropyReading(mean_entropy=h, tokens=10, step=1))
        plain.observe(EntropyReading(mean_entropy=h, tokens=10, step=1))
        smoothed = float(low.state_dict()["smoothed_entropy"])
        error = max(relative_error(float(low.target_entropy()), smoothed), -1.0)  # the rule's clipped e
        integral = before["integral"] if before["integral"] is not None else before["alpha"]
        expected = float(plain.state_dict()["integral"])
        if error > 0.0 and integral < 0.005:
            expected = min(max(expected + linear * 0.005 * error, 1e-5), 1.0)
        # the same float operations in the same order: equal up to the last bit of one addition
        assert float(low.state_dict()["integral"]) == pytest.approx(expected, rel=1e-12, abs=0.0)
