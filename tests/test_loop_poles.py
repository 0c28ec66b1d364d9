"""benchmarks/loop_poles.py: the relative rule's linearised loop at the library's own defaults is
stable on every plant of the grid with s ≤ 1, and the committed table is what the script computes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from entropyctl.controllers.parts import RelativeUpdate

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("loop_poles", ROOT / "benchmarks" / "loop_poles.py")
assert spec is not None and spec.loader is not None
loop_poles = importlib.util.module_from_spec(spec)
spec.loader.exec_module(loop_poles)


def test_the_defaults_are_stable_on_every_plant_of_the_grid() -> None:
    update = RelativeUpdate()
    assert loop_poles.largest_radius(update.step, update.proportional, update.smoothing) < 1.0
    # and the first setting of the table is the library's defaults
    assert loop_poles.SETTINGS[0] == (update.step, update.proportional, update.smoothing)


def test_a_gain_past_the_stability_edge_is_found_unstable() -> None:
    """The check can fail: pure integral action is unstable once κ·s ≥ 1 (Jury)."""
    assert loop_poles.radius(1.2, 0.0, 0.0, 1.0, 1.0, 0) > 1.0
    assert loop_poles.radius(0.8, 0.0, 0.0, 1.0, 1.0, 0) < 1.0


def test_the_committed_table_is_reproduced() -> None:
    rows = json.loads((ROOT / "benchmarks" / "results" / "loop_poles.json").read_text())
    first = rows[0]
    kappa, kappa_p, beta = first["step"], first["proportional"], first["smoothing"]
    assert first["s_max"] == loop_poles.s_max(kappa, kappa_p, beta)
    assert first["largest_radius_s_le_1"] == round(loop_poles.largest_radius(kappa, kappa_p, beta), 4)


def test_a_second_integrator_loses_the_slow_plants() -> None:
    """docs/controllers.md, "Why no second integrator": with a velocity term the slow plants of the grid
    go unstable, the fast ones stay stable, and the committed table is what the script computes."""
    kappa, kappa_p, beta = loop_poles.SETTINGS[0]
    assert loop_poles.radius_with_velocity(kappa, kappa_p, 0.001, beta, 0.003, 1.0, 1) > 1.0
    assert loop_poles.radius_with_velocity(kappa, kappa_p, 0.001, beta, 0.3, 1.0, 1) < 1.0
    # without the velocity the polynomial is the one-integrator loop's times (z - 1): no root outside
    assert loop_poles.radius_with_velocity(kappa, kappa_p, 0.0, beta, 0.003, 1.0, 1) < 1.0 + 1e-9
    rows = json.loads((ROOT / "benchmarks" / "results" / "loop_poles_velocity.json").read_text())
    row = next(r for r in rows if r["velocity"] == 0.001)
    computed = loop_poles.slowest_unstable(kappa, kappa_p, 0.001, beta)
    assert row["unstable_plants"] == computed["unstable_plants"]
    assert row["largest_unstable_ds"] == round(computed["largest_unstable_ds"], 5)
