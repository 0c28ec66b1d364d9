"""``update.apply: at_or_below_target``: the plan applies α_t only after a reading at or below H* (the rule's
own reading: the smoothed H̃ for ``relative``), and α_t itself moves exactly as without the gate."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from entropyctl import EntropyReading, GroupOutcome, create_controller
from entropyctl.config import ConfigError, load_run_config

ACCURACY = torch.tensor([0.0, 0.25, 0.75, 1.0])


def _run(config: dict, entropies: list[float]) -> tuple[list[torch.Tensor], list[float], list[float | None]]:
    """Each step: the plan's coefficients, then the reading; returns the plans, α_t after each reading and
    the smoothed reading the relative rule acted on (None for the other rules)."""
    controller = create_controller(config)
    plans, alphas, smoothed = [], [], []
    for step, entropy in enumerate(entropies, start=1):
        plans.append(controller.plan(GroupOutcome(accuracy=ACCURACY, group_size=8, step=step)).coef)
        controller.observe(EntropyReading(mean_entropy=entropy, tokens=64, step=step))
        alphas.append(controller.metrics()["alpha"])
        smoothed.append(getattr(controller, "smoothed_entropy", None))
    return plans, alphas, smoothed


def _gated(config: dict) -> dict:
    return {**config, "update": {**config.get("update", {}), "apply": "at_or_below_target"}}


readings = st.lists(st.floats(0.05, 3.0, allow_nan=False), min_size=2, max_size=60)


@settings(max_examples=60, deadline=None)
@given(entropies=readings, name=st.sampled_from(["aer", "target"]), tau=st.sampled_from([0.3, 0.5, 0.9]))
def test_the_relative_rules_gate_follows_its_smoothed_reading(
    entropies: list[float], name: str, tau: float
) -> None:
    config = {"name": name, "anchor": {"tau": tau}}
    plain_plans, plain_alphas, _ = _run(config, entropies)
    plans, alphas, smoothed = _run(_gated(config), entropies)
    assert alphas == plain_alphas  # α_t moves exactly as without the gate
    h0 = entropies[0]
    assert torch.count_nonzero(plans[0]) == 0  # nothing read yet
    assert torch.count_nonzero(plans[1]) == 0  # the first reading anchors H0 (τ < 1: above H*)
    for t in range(2, len(entropies)):
        previous = smoothed[t - 1]
        assert previous is not None
        if previous <= tau * h0:
            assert torch.equal(plans[t], plain_plans[t])  # open: exactly the ungated plan
        else:
            assert torch.count_nonzero(plans[t]) == 0


@pytest.mark.parametrize(
    "update",
    [
        {"rule": "sign", "delta": 0.001, "alpha_max": 0.05},
        {"rule": "additive", "eta": 0.01},
        {"rule": "log", "eta": 0.5, "alpha_min": 1e-4, "alpha_max": 0.05},
    ],
)
def test_the_first_releases_rules_gate_on_the_raw_reading(update: dict) -> None:
    rng = torch.Generator().manual_seed(1)
    entropies = (0.6 + 0.3 * torch.randn(80, generator=rng, dtype=torch.float64)).abs().tolist()
    config = {"name": "target", "alpha_0": 0.01, "anchor": {"mode": "absolute", "target_entropy": 0.6}}
    config["update"] = update
    plain_plans, plain_alphas, _ = _run(config, entropies)
    plans, alphas, _ = _run(_gated(config), entropies)
    assert alphas == plain_alphas
    assert torch.count_nonzero(plans[0]) == 0  # no reading yet: shut, as TRL's first step
    opened = 0
    for t in range(1, len(entropies)):
        if entropies[t - 1] <= 0.6:
            assert torch.equal(plans[t], plain_plans[t])
            opened += int(torch.count_nonzero(plans[t]) > 0)
        else:
            assert torch.count_nonzero(plans[t]) == 0
    assert opened > 10  # the gate opened with a coefficient to apply on many steps


def test_a_gated_controller_resumes_with_its_gate() -> None:
    config = _gated({"name": "aer", "update": {"smoothing": 0.0}})  # H̃ is the reading: H* = 0.8
    entropies = [2.0, 1.5, 0.5, 0.6, 1.2, 0.4]
    whole = create_controller(config)
    first = create_controller(config)
    for step, entropy in enumerate(entropies, start=1):
        whole.observe(EntropyReading(mean_entropy=entropy, tokens=10, step=step))
        if step <= 3:
            first.observe(EntropyReading(mean_entropy=entropy, tokens=10, step=step))
    resumed = create_controller(config)
    resumed.load_state_dict(first.state_dict())
    assert resumed.state_dict()["at_or_below"] is True  # the last reading, 0.5, is at or below 0.8
    for step, entropy in enumerate(entropies[3:], start=4):
        resumed.observe(EntropyReading(mean_entropy=entropy, tokens=10, step=step))
    assert resumed.state_dict() == whole.state_dict()
    # a checkpoint written before the gate existed has no such key: the gate starts shut
    old = {k: v for k, v in first.state_dict().items() if k != "at_or_below"}
    legacy = create_controller(config)
    legacy.load_state_dict(old)
    outcome = GroupOutcome(accuracy=ACCURACY, group_size=8, step=4)
    assert torch.count_nonzero(legacy.plan(outcome).coef) == 0
    assert torch.count_nonzero(first.plan(outcome).coef) > 0


def test_the_gate_is_an_option_of_the_moving_rules_only(tmp_path: Path) -> None:
    run = load_run_config(None, ["controller.update.apply=at_or_below_target"])
    assert run.controller.update.apply == "at_or_below_target"  # type: ignore[attr-defined]
    assert load_run_config(None).controller.update.apply == "always"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="apply"):
        load_run_config(None, ["controller.update.apply=sometimes"])
    with pytest.raises(ValueError, match="apply"):
        create_controller({"name": "aer", "update": {"rule": "none", "apply": "at_or_below_target"}})


def test_the_gate_shuts_the_bonus_in_a_closed_loop_above_the_target() -> None:
    """An entropy that never comes down to H* gets no bonus at all through the gate, while α_t is held."""
    controller = create_controller(_gated({"name": "target", "anchor": {"tau": 0.1}}))
    for step in range(1, 50):
        coef = controller.plan(GroupOutcome(accuracy=ACCURACY, group_size=8, step=step)).coef
        assert float(coef.abs().max()) == 0.0
        controller.observe(EntropyReading(mean_entropy=1.0 + 0.01 * math.sin(step), tokens=10, step=step))
    assert controller.metrics()["alpha"] > 0.0  # α_t is there, held back
