"""The committed controller study on an external task (benchmarks/rg_study: reasoning-gym chain_sum at three
levels; no bonus, fixed α small and large, aer; 3 seeds × 600 steps of configs/rg_study.yaml; clip-higher
against no bonus at two epochs per batch, configs/rg_study_clip.yaml)
is what its run directories say: every run is the shipped config's arm × seed, finished; regenerating the
report from the committed metrics and summaries reproduces the committed report.json; docs/ablations.md
quotes the committed report.md's rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from committed_runs import (
    assert_docs_quote,
    assert_numbers_equal,
    assert_runs_are_the_configs_arms,
    metrics_without_timings,
)

from entropyctl.experiments.report import write_report

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "benchmarks" / "rg_study"
#: (committed study, the shipped config it ran, the docs' table marker quoting its report, seeds committed)
STUDIES = [
    (STUDY, ROOT / "configs" / "rg_study.yaml", "rg-study-table", 3),
    (ROOT / "benchmarks" / "rg_study_clip", ROOT / "configs" / "rg_study_clip.yaml", "rg-clip-table", 3),
]
IDS = [study.name for study, *_ in STUDIES]


@pytest.mark.parametrize(("study", "config", "marker", "seeds"), STUDIES, ids=IDS)
def test_committed_runs_are_the_shipped_configs_arms(
    study: Path, config: Path, marker: str, seeds: int
) -> None:
    base = yaml.safe_load(config.read_text())
    ablation = base.pop("ablation")
    assert ablation["seeds"] == 3
    count = assert_runs_are_the_configs_arms(
        base, ablation["arms"], list(range(seeds)), study, base["trainer"]["steps"]
    )
    assert count == seeds * len(ablation["arms"]) >= 4
    committed = {p.parent.name for p in study.glob("*/seed*/summary.json")}
    assert committed == {f"seed{s}" for s in range(seeds)}


@pytest.mark.parametrize(("study", "config", "marker", "seeds"), STUDIES, ids=IDS)
def test_committed_report_is_reproduced_from_the_committed_runs(
    study: Path, config: Path, marker: str, seeds: int, tmp_path: Path
) -> None:
    committed = json.loads((study / "report.json").read_text())
    regenerated = json.loads(json.dumps(write_report(study, tmp_path), default=str))
    assert list(regenerated["arms"]) == list(committed["arms"])
    assert_numbers_equal(regenerated["arms"], committed["arms"], "arms")
    for arm, numbers in committed["arms"].items():
        assert numbers["n_finished"] == numbers["n_runs"] == seeds, arm


@pytest.mark.parametrize(("study", "config", "marker", "seeds"), STUDIES, ids=IDS)
def test_docs_quote_the_committed_report(study: Path, config: Path, marker: str, seeds: int) -> None:
    assert_docs_quote(study / "report.md", ROOT / "docs" / "ablations.md", marker, 2, prefix="| `")


def test_clip_higher_with_one_update_per_batch_is_the_no_bonus_run() -> None:
    """The committed clip_higher run at ppo_epochs 1 / mini_batches 1 logged exactly what the no-bonus run
    of the same seed logged (all but the timings), with no token ever clipped: clipping cannot act
    on-policy, which is why configs/rg_study_clip.yaml holds that arm at two epochs per batch."""
    clip = STUDY / "probe" / "clip_higher_one_update"
    plain = STUDY / "fixed_alpha=0" / "seed0"
    launched = yaml.safe_load((clip / "config.yaml").read_text())
    assert launched["controller"]["name"] == "clip_higher" and launched["algorithm"]["ppo_epochs"] == 1

    clipped, unclipped = metrics_without_timings(clip), metrics_without_timings(plain)
    assert len(clipped) == len(unclipped) == 600
    assert all(float(r["clip_frac_low"]) == float(r["clip_frac_high"]) == 0.0 for r in clipped)
    shared = [k for k in clipped[0] if k in unclipped[0]]
    assert {"entropy", "reward", "loss", "grad_norm"} <= set(shared)
    assert [[r[k] for k in shared] for r in clipped] == [[r[k] for k in shared] for r in unclipped]
    summaries = [json.loads((run / "summary.json").read_text()) for run in (clip, plain)]
    assert summaries[0]["after"] == summaries[1]["after"]
