"""The entropy plant's rate response (entropyctl.controllers.plant): the bonus sets how fast the
entropy moves, not where it settles."""

from __future__ import annotations

import math

import pytest
import torch

from entropyctl.controllers.base import GroupOutcome, Plan
from entropyctl.controllers.plant import EntropyPlant


def step_with(plant: EntropyPlant, coef: float) -> float:
    outcome = GroupOutcome(accuracy=torch.full((4,), 0.5), group_size=8, step=plant.step_index)
    plant.step(Plan(coef=torch.full((4,), coef), clip_low=0.2, clip_high=0.2), outcome)
    return plant.entropy


def rate_plant(**kwargs: float) -> EntropyPlant:
    base = {"response": "rate", "balance": 0.01, "rate_gain": 0.02, "collapse": 0.003, "rise_max": 0.02}
    return EntropyPlant(**{**base, "noise": 0.0, "h_init": 1.0, "h_max": 3.0, **kwargs})  # type: ignore[arg-type]


def test_without_a_bonus_log_entropy_falls_by_collapse_per_step() -> None:
    plant = rate_plant()
    for step in range(1, 101):
        assert step_with(plant, 0.0) == pytest.approx(math.exp(-0.003 * step), rel=1e-12)


def test_the_balancing_coefficient_holds_the_entropy_still_and_others_move_it() -> None:
    plant = rate_plant()
    # the plan holds float32 coefficients: 0.01 is off by ≤ 2^-24 relative, which moves log H by
    # ≤ rate_gain·2^-23 per step (the log of the ratio, with room for the division's rounding)
    for step in range(1, 51):
        assert step_with(plant, 0.01) == pytest.approx(1.0, rel=step * 0.02 * 2**-23)
    # twice the balance: log H rises by rate_gain·log 2 per step; a tenth: falls, clipped at collapse
    assert plant.rate(0.02) == pytest.approx(0.02 * math.log(2.0))
    assert plant.rate(0.001) == -0.003
    assert plant.rate(10.0) == 0.02  # rise_max
    assert step_with(plant, 0.02) == pytest.approx(math.exp(0.02 * math.log(2.0)))


def test_drift_raises_the_balancing_coefficient_and_h_max_caps() -> None:
    plant = rate_plant(drift=0.01)
    assert plant.rate(0.01, step=100) == pytest.approx(max(0.02 * math.log(math.exp(-1.0)), -0.003))
    capped = rate_plant(h_init=2.9)
    for _ in range(20):
        step_with(capped, 1.0)
    assert capped.entropy == 3.0


def test_bad_response_or_parameters_are_errors() -> None:
    with pytest.raises(ValueError, match="response"):
        EntropyPlant(response="integral")
    with pytest.raises(ValueError, match="rate response"):
        rate_plant(balance=0.0)


def test_hill_one_is_the_plain_level_response_and_a_larger_one_has_dead_decades_and_a_cliff() -> None:
    """H_eq(c) = h_floor + (h_max − h_floor)·(g·c)^n / (1 + (g·c)^n): n = 1 is the saturating
    response; n = 3 does almost nothing a decade below 1/g and is steeper than n = 1 at 1/g."""
    plain, steep = EntropyPlant(gain=100.0), EntropyPlant(gain=100.0, hill=3.0)
    for c in (0.0, 1e-4, 1e-3, 0.01, 0.1):
        drive = 100.0 * c
        assert plain.equilibrium(c) == 0.02 + (3.0 - 0.02) * drive / (1.0 + drive)
    assert steep.equilibrium(0.01) == pytest.approx(plain.equilibrium(0.01))  # both halfway at 1/g
    # a decade below 1/g: (0.1)^3/(1 + 0.1^3) ≈ 1e-3 of the range, against 0.1/1.1 for n = 1
    assert steep.equilibrium(1e-3) - 0.02 == pytest.approx((3.0 - 0.02) * 1e-3 / (1.0 + 1e-3))
    assert steep.equilibrium(1e-3) - 0.02 < (plain.equilibrium(1e-3) - 0.02) / 50

    def elasticity(plant: EntropyPlant, c: float) -> float:
        return math.log(plant.equilibrium(c * 1.01) / plant.equilibrium(c / 1.01)) / (2 * math.log(1.01))

    assert elasticity(steep, 0.01) > 1.0 > elasticity(plain, 0.01)
    with pytest.raises(ValueError, match="hill"):
        EntropyPlant(hill=0.0)
