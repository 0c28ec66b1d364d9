"""Closed-loop stability on the entropy plant (entropyctl.controllers.plant): adaptive controllers hold
entropy within ±10% of H*, fixed coefficients collapse or explode (the failure AER addresses).

The first release's rules (additive, log, sign) are checked on the plant family their step sizes
were chosen on; the default ``relative`` rule on a wider family it was not tuned on (below)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from entropyctl import create_controller
from entropyctl.controllers.band import alpha_at_bound, read_band
from entropyctl.controllers.plant import EntropyPlant, Trajectory, simulate

STEPS = 300
SETTLE_BY = 200  # steps
SHORT_WINDOW = 10  # steps


def settling_step(trajectory: Trajectory, tolerance: float = 0.1, window: int = SHORT_WINDOW) -> int:
    """First step after which the ``window``-step moving average of the readings stays within
    ±tolerance·H* (len if never).

    A moving average, not each reading: the plant's shocks and the prompts' random difficulty make
    single readings Gaussian-tailed, so "every reading within ±10 %" is a tail event that some seed
    eventually breaks (the sign rule over 1000 random plants per controller: a reading outside as
    late as step 297; CI hit one at step 202). The 10-step average's worst deviation after step 200
    over those plants was 8.5 % for the sign rule and ≤ 6 % for the others."""
    last_outside = -1
    for i in range(window - 1, len(trajectory.entropy)):
        target = trajectory.target_entropy[i]
        average = sum(trajectory.entropy[i - window + 1 : i + 1]) / window
        if not (math.isfinite(target) and abs(average - target) <= tolerance * target):
            last_outside = i
    return last_outside + 1


# The documented range (entropyctl.controllers.plant): gain ∈ [25, 100] nats per unit coefficient,
# decay ∈ [0.05, 0.2] per step, any seed.
gains = st.floats(25.0, 100.0)
decays = st.floats(0.05, 0.2)
seeds = st.integers(0, 2**31 - 1)


@pytest.mark.parametrize("name", ["aer", "target"])
@pytest.mark.parametrize("update", ["additive", "log", "relative"])
def test_adaptive_controllers_settle_within_ten_percent_and_stay(name: str, update: str) -> None:
    @settings(max_examples=8, deadline=None)
    @given(gain=gains, decay=decays, seed=seeds)
    def check(gain: float, decay: float, seed: int) -> None:
        controller = create_controller({"name": name, "update": update})
        trajectory = simulate(controller, EntropyPlant(gain=gain, decay=decay, seed=seed), STEPS)
        assert trajectory.target_entropy[-1] == pytest.approx(0.4 * trajectory.entropy[0])
        settled = settling_step(trajectory)
        assert settled <= SETTLE_BY, f"10-step average still outside ±10% of H* at step {settled - 1}"

    check()


@pytest.mark.parametrize("name", ["aer", "target"])
def test_sign_rule_settles_at_moderate_gain(name: str) -> None:
    # The sign rule is bang-bang: its limit cycle grows with the plant's gain and its lag; ±10% holds
    # to gain 50 with decay ≥ 0.08 (at decay 0.05-0.06 some seeds still cycle outside ±10% at step 200).
    # Its 10-step average is the one closest to the bound: worst 8.5 % after step 200 on 1000 plants.
    @settings(max_examples=6, deadline=None)
    @given(gain=st.floats(25.0, 50.0), decay=st.floats(0.08, 0.15), seed=seeds)
    def check(gain: float, decay: float, seed: int) -> None:
        controller = create_controller({"name": name, "update": "sign"})
        trajectory = simulate(controller, EntropyPlant(gain=gain, decay=decay, seed=seed), STEPS)
        assert settling_step(trajectory) <= SETTLE_BY

    check()


def test_fixed_alpha_too_small_collapses_and_too_large_explodes() -> None:
    h_init = 1.0
    small = simulate(
        create_controller({"name": "fixed", "alpha": 1e-4}), EntropyPlant(h_init=h_init, seed=1), STEPS
    )
    large = simulate(
        create_controller({"name": "fixed", "alpha": 0.1}), EntropyPlant(h_init=h_init, seed=1), STEPS
    )
    assert max(small.entropy[-50:]) < 0.1 * h_init  # collapse: below 10% of H0
    assert min(large.entropy[-50:]) > 2.0 * h_init  # explosion: more than twice H0, near h_max = 3
    # ... while aer on the very same plant holds 0.4·H0.
    aer = simulate(create_controller("aer"), EntropyPlant(h_init=h_init, seed=1), STEPS)
    assert all(abs(h - 0.4) <= 0.04 for h in aer.entropy[-100:])


def test_no_bonus_collapses() -> None:
    trajectory = simulate(create_controller("clip_higher"), EntropyPlant(seed=3), 150)
    assert trajectory.entropy[-1] < 0.05
    assert trajectory.alpha[-1] == 0.0


# --------------------------------------------------------------------------------------------
# The default rule over a wide plant family
# --------------------------------------------------------------------------------------------
# The defaults (update: relative, step 0.05, proportional 2, smoothing 0.8, α in [1e-5, 1]) were
# chosen on grids of level plants (gain {25, 50, 100} × decay {0.05, 0.1, 0.2}; gain {5, 50, 500} ×
# decay {0.003, 0.01, 0.03} × drift {0, 0.002} from h_init 0.5 with 10 % reading noise and one step
# of lag) and of rate plants (docs/controllers.md). This family is drawn at random over
# wider, continuous ranges and other shapes: the gain over 100× (so α* spans two decades), every
# plant with ≥ 10 % reading noise, one extra step of lag and a drift toward collapse, a different
# H0, h_max and difficulty mix.
WIDE_STEPS = 1000
WIDE_SETTLED = 300  # the band is checked from here on; docs/controllers.md gives the settling times


@st.composite
def wide_plants(draw: st.DrawFn) -> EntropyPlant:
    easy = draw(st.floats(0.1, 0.5))
    return EntropyPlant(
        gain=10 ** draw(st.floats(math.log10(4.0), math.log10(400.0))),
        decay=draw(st.floats(0.03, 0.3)),
        reading_noise=draw(st.floats(0.1, 0.2)),
        lag=1,
        drift=draw(st.sampled_from([0.0, 0.001, 0.002])),
        h_init=draw(st.floats(0.5, 2.0)),
        h_max=draw(st.floats(2.5, 6.0)),
        difficulty_mix=((easy, 0.9), (0.4, 0.5), (0.6 - easy, 0.1)),
        seed=draw(seeds),
    )


#: A plant whose balancing α at the end of the run lies above this fraction of α_max is out of the
#: family: with its drift toward collapse it needs α at the cap, which no rule can exceed (a drawn
#: plant with gain 4.2, drift 0.002 and H0 2 needed α ≈ 0.9 of 1 by step 1000 and sat at the cap).
REACHABLE = 0.5


def balancing_alpha(plant: EntropyPlant, name: str, step: int) -> float:
    """The α_t whose bonus holds ``plant`` at H* = 0.4·h_init at ``step``: the applied coefficient
    c* with H_eq(c*) = H* over the share of α_t that ``name``'s plans apply (AER: hard prompts only),
    measured on a copy of the plant so the drawn one's random stream is untouched."""
    probe = dataclasses.replace(plant)
    controller = create_controller(name)
    alpha = controller.config.alpha_0  # type: ignore[attr-defined]
    shares = []
    for _ in range(20):
        outcome = probe.outcome()
        shares.append(probe.applied_coefficient(controller.plan(outcome), outcome) / alpha)
    x = (0.4 * plant.h_init - plant.h_floor) / (plant.h_max - plant.h_floor)
    coefficient = x / (plant.gain_at(step) * (1.0 - x))
    return coefficient / (sum(shares) / len(shares))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["aer", "target"])
def test_defaults_hold_the_band_on_a_wide_plant_family(name: str) -> None:
    """With its own defaults: the 50-step moving average within ±20 % of H* on ≥ 90 % of the steps
    after WIDE_SETTLED, α at a bound on ≤ 10 % of them, and no explosion (the average stays
    below 1.5·H*, and below h_max from the start: a single reading carries up to 20 % noise, and
    the first one, before any control, can lie above h_max on a plant that starts near it)."""

    @settings(max_examples=10, deadline=None)
    @given(plant=wide_plants())
    def check(plant: EntropyPlant) -> None:
        controller = create_controller(name)
        low, high = controller.config.alpha_bounds  # type: ignore[attr-defined]
        assume(balancing_alpha(plant, name, WIDE_STEPS) <= REACHABLE * high)
        trajectory = simulate(controller, plant, WIDE_STEPS)
        target = trajectory.target_entropy[-1]
        band = read_band(trajectory.entropy, target)  # full 50-step windows from WIDE_SETTLED on
        average = band.average[WIDE_SETTLED:]
        in_band = float(band.in_band[WIDE_SETTLED:].mean())
        at_bound = float(alpha_at_bound(trajectory.alpha[WIDE_SETTLED:], low, high).mean())
        assert in_band >= 0.9, f"moving average in ±20 % of H* on {in_band:.0%} of settled steps"
        assert at_bound <= 0.1, f"alpha at a bound on {at_bound:.0%} of settled steps"
        assert max(average) <= 1.5 * target and float(np.nanmax(band.average)) < plant.h_max

    check()
