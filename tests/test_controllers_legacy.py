"""The first release's controller configs still mean what they meant: replaying the entropy readings
of every committed run through a controller built from that run's own config.yaml (written in the
first release's flat form) gives back the α it logged, step for step."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import yaml

from entropyctl import EntropyReading, create_controller

ROOT = Path(__file__).resolve().parents[1]
RUNS = sorted(
    path.parent
    for study in ("ablation_run", "ablation_collapse_run")
    for path in (ROOT / "benchmarks" / study).glob("*/seed*/metrics.csv")
)


def test_the_committed_runs_are_found() -> None:
    assert len(RUNS) >= 45  # 12 arms x 3 seeds + 3 arms x 3 seeds


@pytest.mark.parametrize("run", RUNS, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}/{p.name}")
def test_replayed_readings_give_the_logged_alpha(run: Path) -> None:
    controller_config = yaml.safe_load((run / "config.yaml").read_text())["controller"]
    controller = create_controller(controller_config)
    with (run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows
    for row in rows:
        if float(row.get("readings_ignored") or 0.0) > float(controller.metrics()["readings_ignored"]):
            controller.observe(EntropyReading(mean_entropy=math.nan, tokens=0, step=int(row["step"])))
        else:
            reading = EntropyReading(
                mean_entropy=float(row["entropy"]), tokens=int(row["tokens"]), step=int(row["step"])
            )
            controller.observe(reading)
        logged = float(row["alpha"])
        assert controller.metrics()["alpha"] == pytest.approx(logged, rel=1e-9, abs=1e-15), (
            f"{run}: step {row['step']}"
        )


def test_a_flat_delta_alone_is_answered_with_the_rule_that_takes_it() -> None:
    """docs/controllers.md: the first release's flat ``delta`` without ``update: sign`` is an error that writes
    the nested form with the rule that takes it (it wrote ``<one that does>``)."""

    with pytest.raises(ValueError, match=r"write update: \{rule: sign, delta: 0\.001\}"):
        create_controller({"name": "aer", "delta": 0.001})
