"""`entropyctl train --print-config`: the run config a train command would run, resolved and printed,
with nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from entropyctl.cli import main
from entropyctl.config import load_run_config, parse_run_config


def test_print_config_is_the_config_the_run_would_use_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--print-config", "--set", "trainer.steps=3", "--threads", "1"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert parse_run_config(printed) == load_run_config(None, ["trainer.steps=3", "trainer.threads=1"])
    assert printed["trainer"]["steps"] == 3 and printed["data"]["levels"] == [2]  # the embedded default's
    assert list(tmp_path.iterdir()) == []


def test_a_partial_config_file_starts_from_the_schema_defaults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What docs/training.md warns of: a config file naming only the controller is not the main job with
    another controller; every field it leaves out takes the schema's default (all five levels, lr 1e-4),
    not the embedded default's (level 2, lr 3e-4)."""
    partial = tmp_path / "fixed.yaml"
    partial.write_text("controller: {name: fixed, alpha: 0.01}\n")
    assert main(["train", "--config", str(partial), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    embedded = load_run_config(None, [])
    assert printed["controller"] == {"name": "fixed", "alpha": 0.01, "clip_low": 0.2, "clip_high": 0.2}
    assert printed["data"]["levels"] is None and embedded.data.levels == [2]
    assert printed["optim"]["lr"] == 1e-4 and embedded.optim.lr == 3e-4


def test_print_config_with_a_bad_override_is_one_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--print-config", "--set", "trainer.stpes=3"]) == 2
    assert "did you mean trainer.steps" in capsys.readouterr().err
