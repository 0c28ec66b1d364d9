"""trainer.wandb: every metric also goes to Weights & Biases (offline here: no network), and a resumed
run continues the same W&B run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from trainer_helpers import read_metrics, tiny_config

from entropyctl.config import ConfigError, load_run_config
from entropyctl.trainer.run import run_training

pytest.importorskip("wandb")

BASE = ["eval.before=false", "eval.after=false", "trainer.wandb.mode=offline", "trainer.wandb.project=tests"]


def _offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def test_offline_run_logs_every_metric_and_a_resume_continues_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_training(tiny_config("trainer.steps=2", *BASE), run)
    run_id = (run / "wandb" / "run_id").read_text().strip()
    [first] = _offline_runs(run)
    assert first.name.endswith(run_id)
    # the run's records: every metrics.csv column's name and the config are in them (wandb's own
    # binary log; its keys and JSON values are stored as plain strings)
    record = (first / f"run-{run_id}.wandb").read_bytes()
    columns = [c for c in read_metrics(run)[0] if c != "step"]
    missing = [c for c in columns if c.encode() not in record]
    assert not missing, missing
    assert b"trainer/global_step" in record and b"controller" in record

    run_training(tiny_config("trainer.steps=3", *BASE), run, resume="auto")
    assert (run / "wandb" / "run_id").read_text().strip() == run_id  # the same W&B run, continued
    assert all(r.name.endswith(run_id) for r in _offline_runs(run))  # one folder per start of the run

    run_training(tiny_config("trainer.steps=2", *BASE), run, overwrite=True)
    assert (run / "wandb" / "run_id").read_text().strip() != run_id  # a new run, a new W&B run


def test_without_the_package_the_run_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install 'entropyctl\[wandb\]'"):
        run_training(tiny_config("trainer.steps=1", *BASE), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=r"trainer.wandb.mode"):
        load_run_config(None, ["trainer.wandb.mode=sometimes"])


def test_a_failed_run_ends_its_wandb_run_as_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning.pytorch as pl
    import wandb

    exit_codes: list[int | None] = []
    finish = wandb.Run.finish

    def spy(self, exit_code=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        exit_codes.append(exit_code)
        return finish(self, exit_code, *args, **kwargs)

    monkeypatch.setattr(wandb.Run, "finish", spy)

    class Crash(pl.Callback):
        def on_train_batch_end(self, *args: object) -> None:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(tiny_config("trainer.steps=2", *BASE), tmp_path / "failed", callbacks=[Crash()])
    run_training(tiny_config("trainer.steps=1", *BASE), tmp_path / "ok")
    assert exit_codes[:2] == [1, 0]
