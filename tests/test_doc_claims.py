"""Claims the docs make about the controllers, checked against the code: how a non-finite group accuracy
is read, how ``target`` with an absolute target and the sign rule relates to TRL's adaptive entropy, and clip
bounds outside the surrogate's domain rejected when the config is loaded."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from entropyctl import EntropyReading, GroupOutcome, create_controller
from entropyctl.config import ConfigError, load_run_config


def test_non_finite_accuracy_reads_as_the_docs_say() -> None:
    """docs/controllers.md: NaN and −∞ count as 0 (hard), +∞ as 1 (easy); finite values are clamped."""
    controller = create_controller({"name": "aer", "allocation": {"rule": "linear"}})
    odd = torch.tensor([math.nan, -math.inf, math.inf, -0.5, 1.5])
    plain = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0])
    got = controller.plan(GroupOutcome(accuracy=odd, group_size=8, step=1)).coef
    want = controller.plan(GroupOutcome(accuracy=plain, group_size=8, step=1)).coef
    assert torch.equal(got, want)
    assert float(got[0]) > 0.0 and float(got[2]) == 0.0  # hard gets the bonus, easy none (w = 1 − acc)


def trl_adaptive_entropy(
    entropies: list[float], *, coef: float, target: float, delta: float, coef_min: float, coef_max: float
) -> tuple[list[float], list[float]]:
    """TRL 1.16's adaptive entropy control (``GRPOConfig(use_adaptive_entropy=True)``), one optimizer step
    per reading, written out from its documentation: the coefficient applied in step t is ``entropy_coef``
    if the previous step's entropy was ``<= entropy_target`` and 0 otherwise (0 in the first step, whose
    "previous entropy" is +∞); after the step, ``entropy_coef`` rises by δ (capped at ``entropy_coef_max``)
    when the step's entropy is ``<= entropy_target`` — a tie included — and falls by δ (floored at
    ``entropy_coef_min``) otherwise. Returns (the coefficient held before each step, the one applied)."""
    held, applied, last = [], [], math.inf
    for entropy in entropies:
        held.append(coef)
        applied.append(coef if last <= target else 0.0)
        coef = min(coef + delta, coef_max) if entropy <= target else max(coef - delta, coef_min)
        last = entropy
    return held, applied


def target_controller_trajectory(
    entropies: list[float], *, coef: float, target: float, delta: float, coef_min: float, coef_max: float
) -> list[float]:
    """``target`` with an absolute target and the sign rule: the α_t its plan applies in each step."""
    controller = create_controller(
        {
            "name": "target",
            "alpha_0": coef,
            "anchor": {"mode": "absolute", "target_entropy": target},
            "update": {"rule": "sign", "delta": delta, "alpha_min": coef_min, "alpha_max": coef_max},
        }
    )
    applied = []
    for step, entropy in enumerate(entropies, start=1):
        plan = controller.plan(GroupOutcome(accuracy=torch.zeros(4), group_size=8, step=step))
        # the plan's coefficients are float32: α_t rounded once (relative error ≤ 2^-24)
        assert float(plan.coef[0]) == pytest.approx(controller.metrics()["alpha"], rel=2**-24, abs=0.0)
        applied.append(float(controller.metrics()["alpha"]))
        controller.observe(EntropyReading(mean_entropy=entropy, tokens=100, step=step))
    return applied


def test_target_with_the_sign_rule_is_trls_coefficient_without_its_gate() -> None:
    """What docs/controllers.md and docs/trl.md say of TRL's adaptive entropy: on the same entropy sequence
    (no reading exactly on the target), ``target``'s α_t is TRL's ``entropy_coef`` step for step, but TRL
    applies it only after a step whose entropy was at or below the target, and never in the first step."""
    rng = torch.Generator().manual_seed(0)
    entropies = (0.3 + 0.25 * torch.randn(200, generator=rng, dtype=torch.float64)).abs().tolist()
    knobs = {"coef": 0.02, "target": 0.3, "delta": 0.005, "coef_min": 0.0, "coef_max": 0.05}
    assert all(e != knobs["target"] for e in entropies)
    held, trl_applied = trl_adaptive_entropy(entropies, **knobs)
    ours = target_controller_trajectory(entropies, **knobs)
    assert ours == pytest.approx(held, abs=1e-12)
    gated = [0.0] + [
        c if previous <= knobs["target"] else 0.0
        for c, previous in zip(ours[1:], entropies[:-1], strict=True)
    ]
    assert gated == pytest.approx(trl_applied, abs=1e-12)
    assert sum(a != b for a, b in zip(ours, trl_applied, strict=True)) > 50  # the gate is a real difference


def test_target_with_the_gate_applies_what_trl_applies() -> None:
    """docs/controllers.md: with ``update.apply: at_or_below_target`` the plan applies TRL's coefficient, step
    for step (no reading exactly on the target): 0 in the first step and after every step above it."""
    rng = torch.Generator().manual_seed(3)
    entropies = (0.3 + 0.25 * torch.randn(200, generator=rng, dtype=torch.float64)).abs().tolist()
    knobs = {"coef": 0.02, "target": 0.3, "delta": 0.005, "coef_min": 0.0, "coef_max": 0.05}
    assert all(e != knobs["target"] for e in entropies)
    _, trl_applied = trl_adaptive_entropy(entropies, **knobs)
    controller = create_controller(
        {
            "name": "target",
            "alpha_0": knobs["coef"],
            "anchor": {"mode": "absolute", "target_entropy": knobs["target"]},
            "update": {"rule": "sign", "delta": knobs["delta"], "alpha_max": knobs["coef_max"]}
            | {"apply": "at_or_below_target"},
        }
    )
    applied = []
    for step, entropy in enumerate(entropies, start=1):
        applied.append(
            float(controller.plan(GroupOutcome(accuracy=torch.zeros(4), group_size=8, step=step)).coef[0])
        )
        controller.observe(EntropyReading(mean_entropy=entropy, tokens=100, step=step))
    # float32 plans: each coefficient rounded once
    assert applied == pytest.approx(trl_applied, rel=2**-24, abs=0.0)
    assert sum(a > 0 for a in applied) > 50 and sum(a == 0 for a in applied) > 50


def test_at_a_tie_trl_raises_the_coefficient_and_target_holds_it() -> None:
    knobs = {"coef": 0.02, "target": 0.3, "delta": 0.005, "coef_min": 0.0, "coef_max": 0.05}
    held, _ = trl_adaptive_entropy([0.3, 0.3], **knobs)
    ours = target_controller_trajectory([0.3, 0.3], **knobs)
    assert held == pytest.approx([0.02, 0.025]) and ours == pytest.approx([0.02, 0.02])


@pytest.mark.parametrize("name", ["aer", "target", "fixed", "clip_higher"])
def test_clip_low_of_one_or_more_fails_when_the_config_is_loaded(name: str, tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(f"controller:\n  name: {name}\n  clip_low: 1.5\n")
    with pytest.raises(ConfigError, match=r"clip_low.*must be in \[0, 1\)"):
        load_run_config(path)
    with pytest.raises(ConfigError, match=r"clip_low.*must be in \[0, 1\)"):
        create_controller({"name": name, "clip_low": 1.0})
    assert create_controller({"name": name, "clip_low": 0.999}).config.clip_low == 0.999  # type: ignore[attr-defined]
