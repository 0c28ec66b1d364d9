"""Controller options and overrides found wrong by a review (each case fails on the previous code): an
option that could do nothing or the reverse of its description, the α-at-a-bound readings' bounds, and
overrides that lost to the other spelling of their option."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from entropyctl import EntropyReading, create_controller
from entropyctl.config import AERConfig, ConfigError, load_yaml
from entropyctl.controllers.parts import TREND_FAST
from entropyctl.controllers.registry import parse_controller_config
from entropyctl.controllers.target import LOG_ALPHA_FLOOR
from entropyctl.experiments.ablate import parse_arm, resolve_arm_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("smoothing", [TREND_FAST, 0.97])
def test_conditional_needs_a_smoothing_faster_than_the_20_step_average(smoothing: float) -> None:
    """At smoothing 0.95 the smoothed reading is the 20-step average itself (conditional did nothing);
    above it the smoothed reading lags the average and the hold acted when the entropy moved away."""
    with pytest.raises(ConfigError, match="conditional: .* needs smoothing below 0.95"):
        create_controller({"name": "aer", "update": {"conditional": True, "smoothing": smoothing}})
    create_controller({"name": "aer", "update": {"conditional": True, "smoothing": 0.9}})


@pytest.mark.parametrize(
    ("update", "name"),
    [
        ({"climb_from": 0.2}, "climb_from"),
        ({"climb_after": 25}, "climb_after"),
        ({"linear_on": "climb"}, "linear_on"),
    ],
)
def test_an_option_that_shapes_another_is_refused_without_it(update: dict[str, object], name: str) -> None:
    with pytest.raises(ConfigError, match=f"{name}: acts only with"):
        create_controller({"name": "aer", "update": update})


def test_a_release_band_of_1_still_lowers_alpha_far_above_the_target() -> None:
    """The band compares the relative distance above H*; the error the step uses is clipped at −1, so
    with release_band 1 every entropy above H* read as inside the band and α was never lowered."""
    alphas = {}
    for band in (0.5, 1.0):
        controller = create_controller(
            {
                "name": "target",
                "anchor": {"mode": "absolute", "target_entropy": 0.3},
                "update": {"smoothing": 0.0, "proportional": 0.0, "release_band": band},
            }
        )
        for t in range(50):
            controller.observe(EntropyReading(3.0, 100, t))  # 10·H*: 9 above, outside either band
        alphas[band] = controller.alpha
    assert alphas[1.0] == alphas[0.5] < 0.005 / 10


def test_the_at_bound_readings_use_the_bounds_alpha_can_reach() -> None:
    """A constant α (update: none) is at no bound (it read as at a bound on every step); the log rule's
    floor is max(alpha_min, LOG_ALPHA_FLOOR) (α parked there read as inside the bounds)."""
    assert parse_controller_config({"name": "aer", "update": {"rule": "none"}}).alpha_reading_bounds is None
    log = parse_controller_config({"name": "aer", "update": {"rule": "log"}})
    assert log.alpha_reading_bounds == (LOG_ALPHA_FLOOR, 0.05)
    assert AERConfig().alpha_reading_bounds == AERConfig().alpha_bounds


def test_create_controller_overrides_win_over_the_other_spelling() -> None:
    """create_controller(config, tau=...) on a config object or a nested mapping: the override wins, as
    --set's does (both spellings were refused as a conflict)."""
    assert create_controller(AERConfig(), tau=0.5).config.anchor.tau == 0.5
    assert create_controller(AERConfig(), rho=0.3).config.allocation.accuracy_threshold == 0.3
    nested = {"name": "aer", "anchor": {"mode": "initial", "tau": 0.4}}
    kept = copy.deepcopy(nested)
    assert create_controller(nested, tau=0.5).config.anchor.tau == 0.5
    assert nested == kept  # the caller's mapping is left as it was
    # a whole part over the first release's flat spelling of one of its options
    whole = create_controller({"name": "aer", "tau": 0.5}, anchor={"mode": "initial", "tau": 0.3})
    assert whole.config.anchor.tau == 0.3
    bounds = create_controller(
        {"name": "aer", "alpha_max": 0.5}, update={"rule": "relative", "alpha_max": 0.2}
    )
    assert bounds.config.update.alpha_max == 0.2


def test_an_arms_flat_key_wins_over_a_nested_base_as_set_does() -> None:
    base = load_yaml(ROOT / "configs" / "ablation_collapse_v5.yaml")
    for spec, read in [
        ("aer:tau=0.3", lambda c: c["anchor"]["tau"] == 0.3),
        ("aer:alpha_max=0.5", lambda c: c["update"]["alpha_max"] == 0.5),
        ("aer:rho=0.3", lambda c: c["allocation"]["accuracy_threshold"] == 0.3),
    ]:
        assert read(resolve_arm_config(base, parse_arm(spec), 0)["controller"]), spec


def test_a_first_release_config_takes_a_whole_nested_part_over_its_written_defaults() -> None:
    """The first release wrote every field (tau 0.4, anchor_steps 1); replacing the anchor by a mapping
    refused those defaults as options of the new anchor, where replacing it by name did not."""
    first_release = {"name": "aer", "tau": 0.4, "anchor_steps": 1, "eta": 0.05}
    config = parse_controller_config({**first_release, "anchor": {"mode": "absolute", "target_entropy": 0.3}})
    assert config.anchor.mode == "absolute"
    with pytest.raises(ConfigError, match="does not use tau"):
        parse_controller_config(
            {**first_release, "tau": 0.3, "anchor": {"mode": "absolute", "target_entropy": 0.3}}
        )


def test_combined_refuses_a_token_level_controller_as_its_prompt_part() -> None:
    """combined takes the token action from `token` only: a clip_cov under `prompt` was accepted and
    its token action silently dropped."""
    with pytest.raises(ConfigError, match="acts per token"):
        create_controller({"name": "combined", "prompt": {"name": "clip_cov"}})
    assert create_controller({"name": "combined", "prompt": {"name": "fixed"}}).acts_per_token()
