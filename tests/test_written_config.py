"""A written run config (a run directory's ``config.yaml``, a checkpoint's run fingerprint) reads back
as what the run ran with, also after a field was added or a default changed: the fields it lacks read
as ``ABSENT_MEANS`` says, not as today's defaults (``entropyctl.config.run``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from entropyctl.config import (
    ABSENT_MEANS,
    ConfigError,
    RunConfig,
    fill_absent,
    load_run_config,
    parse_run_config,
)
from entropyctl.experiments.ablate import _check_same_config, parse_arms, plan_runs
from entropyctl.trainer.run_dir import fingerprint_changes, run_fingerprint

ROOT = Path(__file__).resolve().parents[1]
WRITTEN = sorted(ROOT.glob("benchmarks/**/config.yaml"))
BOOST = "controller.update.climb_boost"
#: fields whose default changed since they were added: their ABSENT_MEANS entry keeps the old value
#: (none yet). Changing a default means adding it here, not changing its entry.
CHANGED_DEFAULTS: dict[str, Any] = {}


def flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def test_every_field_a_committed_run_lacks_is_in_the_table() -> None:
    """Whoever adds a field to RunConfig lists what its absence means: each committed run config,
    filled from the table, holds every field today's schema writes (the first release's flat controller
    form aside: ``migrate_flat`` reads it with its old meaning)."""
    assert len(WRITTEN) > 200
    for path in WRITTEN:
        raw = yaml.safe_load(path.read_text())
        filled = fill_absent(raw)
        resolved = RunConfig.model_validate(filled).model_dump(mode="json")
        lacking = set(flat(resolved)) - set(flat(filled))
        if not isinstance(raw["controller"].get("update"), dict):
            lacking = {key for key in lacking if not key.startswith("controller.")}
        assert not lacking, f"{path.relative_to(ROOT)} lacks {sorted(lacking)}: add them to ABSENT_MEANS"


def test_the_table_names_schema_fields_at_the_value_before_they_existed() -> None:
    """Every entry is a field of today's schema (for the variant it names), and equals today's default
    unless that default changed (CHANGED_DEFAULTS) — the entries are opt-in features, off."""
    today = flat(RunConfig().model_dump(mode="json"))  # aer, relative update, initial anchor
    for key, value in ABSENT_MEANS.items():
        assert key in today, key
        assert today[key] == CHANGED_DEFAULTS.get(key, value), key
    assert set(CHANGED_DEFAULTS) <= set(ABSENT_MEANS)


def _written_without_boost(tmp_path: Path) -> Path:
    config = RunConfig().model_dump(mode="json")
    del config["controller"]["update"]["climb_boost"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_a_field_a_written_config_lacks_reads_as_the_table_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As if the run had been written when the boost was 10 by default and it is 0 now (or the
    reverse): the written config reads as the table, a user's config as today's default."""
    path = _written_without_boost(tmp_path)
    monkeypatch.setitem(ABSENT_MEANS, BOOST, 10.0)
    assert load_run_config(path, written=True).controller.update.climb_boost == 10.0  # type: ignore[union-attr]
    assert load_run_config(path).controller.update.climb_boost == 0.0  # type: ignore[union-attr]
    # an override still applies on top
    assert (
        load_run_config(path, ["controller.update.climb_boost=2"], written=True).controller.update.climb_boost  # type: ignore[union-attr]
        == 2.0
    )
    # only where the variant has the field: an additive update gets nothing filled
    additive = {"controller": {"name": "aer", "update": {"rule": "additive"}}}
    assert fill_absent(additive) == additive


def test_a_resume_compares_a_field_the_checkpoint_lacks_as_the_table_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A checkpoint written before a field existed resumes without a reported change when today's
    config runs it as it ran; a default that changed since is reported."""
    current = run_fingerprint(RunConfig())
    saved = json.loads(json.dumps(current))
    del saved["config"][BOOST]
    assert fingerprint_changes(saved, current) == []
    monkeypatch.setitem(ABSENT_MEANS, BOOST, 10.0)
    assert fingerprint_changes(saved, current) == [f"{BOOST}: 10.0 -> 0.0"]


def test_ablate_does_not_reuse_a_run_that_ran_with_another_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An arm written as plain ``aer`` resolves to today's defaults; a finished run of it that ran
    with other values is refused, named by field, instead of being reported as today's arm."""
    base = {"controller": {"name": "aer"}, "trainer": {"steps": 7}}
    (spec,) = plan_runs(base, parse_arms(["aer"], where="test"), [0], tmp_path)
    spec.run_dir.mkdir(parents=True)
    (spec.run_dir / "ablate_config.yaml").write_text(yaml.safe_dump(spec.config))
    written = parse_run_config(spec.config).model_dump(mode="json")
    del written["controller"]["update"]["climb_boost"]  # written before the field existed
    (spec.run_dir / "config.yaml").write_text(yaml.safe_dump(written))
    _check_same_config(spec)  # the table says it ran as today's default does: reused
    monkeypatch.setitem(ABSENT_MEANS, BOOST, 10.0)
    with pytest.raises(ConfigError, match=r"climb_boost: 10\.0 -> 0\.0"):
        _check_same_config(spec)
    monkeypatch.setitem(ABSENT_MEANS, BOOST, 0.0)
    written["trainer"]["steps"] = 9
    (spec.run_dir / "config.yaml").write_text(yaml.safe_dump(written))
    with pytest.raises(ConfigError, match=r"trainer\.steps: 9 -> 7"):
        _check_same_config(spec)
