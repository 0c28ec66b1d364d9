"""Every arm of the committed AER studies (configs/ablation.yaml, the collapse runs, the robustness
study) differs from the `aer` arm only in the component it ablates: the same run config outside the
controller, and inside it the same update rule, step size, bounds, anchor, allocation and clip bounds
except the part the arm names. (An arm that silently ran another step size
or target than `aer` would confound "AER without X" with a retuning.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from entropyctl.config import RunConfig
from entropyctl.experiments.ablate import parse_arms, resolve_arm_config

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "configs" / "ablation.yaml"
#: the committed studies whose arms are aer variants and baselines (token-level controllers have their own)
STUDIES = [
    STUDY,
    *(
        REPO / "configs" / f"{name}.yaml"
        for name in ("ablation_collapse", "ablation_collapse_v2", "robustness")
    ),
]

#: which part of the controller config an arm's override key ablates (first-release flat keys included)
PART_OF_KEY = {
    "tau": "anchor", "anchor": "anchor", "target_entropy": "anchor", "anchor_steps": "anchor",
    "eta": "update", "delta": "update", "alpha_min": "update", "alpha_max": "update", "update": "update",
    "dynamic": "update", "alpha_0": "alpha_0",
    "rho": "allocation", "difficulty_aware": "allocation", "allocation": "allocation",
    "clip_low": "clip_low", "clip_high": "clip_high",
}  # fmt: skip
#: what a different controller takes away from aer by construction
PARTS_OF_CONTROLLER = {
    "aer": set(),
    "target": {"allocation"},
    "fixed": {"alpha_0", "update", "anchor", "allocation"},
    "clip_higher": {"alpha_0", "update", "anchor", "allocation", "clip_high"},
}


#: arms that are candidates for the defaults, not ablations: they may change several parts at once
#: (their study config says so; docs/robustness.md, "Two candidates")
CANDIDATES = {"aer:update.step=0.15,update.proportional=3,anchor.steps=10"}


def ablated_parts(controller: str, overrides: dict[str, Any], label: str = "") -> set[str]:
    """The one component an arm takes away or changes: a controller other than aer ablates what it lacks
    (its overrides may only restate aer's values); an aer arm ablates the one part its keys name (a
    candidate for the defaults, every part its keys name)."""
    if controller != "aer":
        return PARTS_OF_CONTROLLER[controller]
    named = {PART_OF_KEY[key.split(".")[0]] for key in overrides if key.split(".")[0] in PART_OF_KEY}
    if label not in CANDIDATES:
        assert len(named) <= 1, f"aer arm with {overrides} changes several components: {sorted(named)}"
    return named


def study_arms(path: Path) -> tuple[dict[str, Any], list[Any]]:
    base = yaml.safe_load(path.read_text())
    return base, parse_arms(base["ablation"]["arms"])


@pytest.mark.parametrize("study", [path.name for path in STUDIES])
def test_the_study_has_an_aer_arm_and_known_controllers(study: str) -> None:
    base, arms = study_arms(REPO / "configs" / study)
    assert base["controller"]["name"] == "aer"
    assert any(a.controller == "aer" and not a.overrides for a in arms)
    assert {a.controller for a in arms} <= set(PARTS_OF_CONTROLLER)


@pytest.mark.parametrize(
    ("study", "label"), [(path.name, a.label) for path in STUDIES for a in study_arms(path)[1]]
)
def test_each_arm_differs_from_aer_only_in_what_it_ablates(study: str, label: str) -> None:
    base, arms = study_arms(REPO / "configs" / study)
    arm = next(a for a in arms if a.label == label)
    aer = next(a for a in arms if a.controller == "aer" and not a.overrides)
    reference = resolve_arm_config(base, aer, seed=0)
    resolved = resolve_arm_config(base, arm, seed=0)

    # outside the controller: the same run config, except fields the arm sets by name
    run_keys = {k.split(".")[0] for k in arm.overrides if k.split(".")[0] in RunConfig.model_fields}
    assert not run_keys, f"{label}: sets run-config fields {run_keys}; the study compares controllers"
    assert {k: v for k, v in resolved.items() if k != "controller"} == {
        k: v for k, v in reference.items() if k != "controller"
    }

    # inside: every part the arm does not ablate is aer's, value for value
    ablated = ablated_parts(arm.controller, arm.overrides, label)
    ours, theirs = resolved["controller"], reference["controller"]
    for part in ("alpha_0", "update", "anchor", "allocation", "clip_low", "clip_high"):
        if part in ablated:
            continue
        assert ours.get(part) == theirs.get(part), (
            f"{label}: {part} {ours.get(part)} != aer's {theirs.get(part)}"
        )
    # and an ablated part really differs (the arm is not a duplicate of aer)
    if arm.controller == "aer" and arm.overrides:
        assert any(ours.get(p) != theirs.get(p) for p in ablated), f"{label}: identical to aer"
