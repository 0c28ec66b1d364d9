"""No code runs from a checkpoint; a bad checkpoint or data file is one line at the command line.

Each load path gets a crafted file whose pickle, when unpickled unsafely, runs a shell command that creates
a marker file. The test first shows the file really does that (``torch.load(weights_only=False)``), then
that the path refuses it and the marker never appears.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from trainer_helpers import TINY, tiny_config

from entropyctl import cli
from entropyctl.trainer.checkpoints import CheckpointError, load_checkpoint


class _RunsCode:
    """Unpickles into ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _malicious_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "state_dict": {"policy.x": torch.zeros(1)},
        "entropy_controller": {},
        "extra": _RunsCode(marker),
    }
    torch.save(payload, path)
    # The file is really malicious: an unsafe load runs its command.
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "code-ran"


def _run_dir_with(tmp_path: Path, ckpt_name: str = "last.ckpt") -> tuple[Path, Path]:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(tiny_config().to_yaml())
    return run_dir, run_dir / "checkpoints" / ckpt_name


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    status = cli.main(argv)
    return status, capsys.readouterr().err


def test_loader_refuses_code_and_names_the_global(tmp_path: Path, marker: Path) -> None:
    ckpt = _malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(CheckpointError, match=r"evil\.ckpt: refused: .*`posix\.system`.*could run code"):
        load_checkpoint(ckpt)
    assert not marker.exists()


@pytest.mark.parametrize("target", ["file", "run_dir"])
def test_evaluate_refuses_a_malicious_checkpoint(
    tmp_path: Path, marker: Path, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, ckpt = _run_dir_with(tmp_path)
    _malicious_checkpoint(ckpt, marker)
    status, err = _cli(["evaluate", "--checkpoint", str(ckpt if target == "file" else run_dir)], capsys)
    assert status == 2
    assert err.count("\n") == 1 and "refused" in err and str(ckpt) in err
    assert not marker.exists()


def test_train_resume_refuses_a_malicious_checkpoint(tmp_path: Path, marker: Path) -> None:
    from entropyctl.trainer.run import run_training
    from entropyctl.trainer.run_dir import RunDirError

    ckpt = _malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(RunDirError, match=r"--resume .*evil\.ckpt: refused: .*`posix\.system`") as info:
        run_training(tiny_config("trainer.steps=1"), tmp_path / "run", resume=str(ckpt))
    assert "\n" not in str(info.value) and "weights_only` set to `False`" not in str(info.value)
    assert not marker.exists()


@pytest.mark.slow
def test_lightning_resume_itself_loads_weights_only(
    tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past the fingerprint check (skipped here), Lightning's own restore in Trainer.fit must refuse it too.
    import entropyctl.trainer.run as train

    monkeypatch.setattr(train, "check_resume", lambda *a, **k: {"checkpoint": "x", "changes": []})
    ckpt = _malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    config = tiny_config("trainer.steps=1", "eval.before=false", "eval.after=false")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        train.run_training(config, tmp_path / "run", resume=str(ckpt))
    assert not marker.exists()


def test_warm_start_cache_never_unpickles(
    tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from entropyctl.models.config import ModelConfig
    from entropyctl.models.loading import load_policy
    from entropyctl.models.warm_start import cached_checkpoint, load_pretrained, pretrain

    cfg = ModelConfig.model_validate(tiny_config().model.model_dump())
    directory = pretrain(cfg)
    # A planted cache: the safetensors replaced by a malicious pytorch_model.bin.
    planted = tmp_path / "planted"
    shutil.copytree(directory, planted)
    (planted / "model.safetensors").unlink()
    _malicious_checkpoint(planted / "pytorch_model.bin", marker)
    with pytest.raises(OSError):
        load_pretrained(planted)
    assert not marker.exists()
    # planted where load_policy looks, in a cache of this test's own: the session's cache is shared with
    # the other test worker (pytest -n 2), which may be loading the default warm start this very moment
    monkeypatch.setenv("ENTROPYCTL_CACHE", str(tmp_path / "own-cache"))
    own = cached_checkpoint(cfg)
    assert own != directory
    shutil.copytree(planted, own)
    with pytest.raises(OSError):
        load_policy(cfg)
    assert not marker.exists()


def test_vllm_weight_transfer_refuses_code(marker: Path) -> None:
    from entropyctl.rollout.vllm import _reload_in_worker

    buffer = io.BytesIO()
    torch.save([("w", torch.zeros(1)), ("x", _RunsCode(marker))], buffer)
    with pytest.raises(pickle.UnpicklingError):
        _reload_in_worker(object(), buffer.getvalue())
    assert not marker.exists()


# ------------------------------------------------------------------ bad files: one line, exit 2


def _truncated(path: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"state_dict": {"policy.x": torch.zeros(1000)}, "entropy_controller": {}}, buffer)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_truncated, "truncated or corrupt checkpoint"),
        (lambda p: p.write_bytes(b"not a checkpoint at all"), "truncated or corrupt checkpoint"),
        (lambda p: torch.save({"weights": torch.zeros(2)}, p), "no 'state_dict', 'entropy_controller' entry"),
        (lambda p: torch.save([1, 2], p), "holds a list"),
        (lambda p: torch.save({"state_dict": {}, "entropy_controller": {}}, p), "no policy weights"),
    ],
    ids=["truncated", "garbage", "foreign", "not_a_dict", "no_policy"],
)
def test_bad_checkpoint_is_one_line(
    tmp_path: Path, make: Any, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, ckpt = _run_dir_with(tmp_path, "step-000002.ckpt")
    make(ckpt)
    status, err = _cli(["evaluate", "--checkpoint", str(ckpt)], capsys)
    assert status == 2
    assert err.count("\n") == 1, err
    assert err.startswith(f"entropyctl evaluate: error: {ckpt}: ") and expected in err


def test_a_bad_resume_is_one_line_that_says_what_it_is_and_leaves_no_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A review's findings: a run directory given to --resume was "no such checkpoint file"; a file that
    is no checkpoint printed torch's mmap advice cut mid-word; --resume auto with --overwrite resumed and
    ignored --overwrite; and each refusal left the new --out holding a run.lock."""
    run_dir, ckpt = _run_dir_with(tmp_path)
    ckpt.write_bytes(b"garbage")
    cases = [
        (["--resume", str(run_dir)], f"a directory, not a checkpoint file; --resume auto --out {run_dir}"),
        (["--resume", str(ckpt)], "truncated or corrupt checkpoint (not the zip archive torch.save writes)"),
        (
            ["--resume", "auto", "--overwrite"],
            "one continues the run in --out, the other removes it; keep one",
        ),
    ]
    for i, (argv, expected) in enumerate(cases):
        out = tmp_path / f"new{i}" / "run"  # the parent folder it would create goes too
        status, err = _cli(["train", "--out", str(out), *argv, *_set(TINY)], capsys)
        assert status == 2 and err.count("\n") == 1 and expected in err, err
        assert "che)" not in err and not out.parent.exists()


def test_debug_keeps_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, ckpt = _run_dir_with(tmp_path)
    ckpt.write_bytes(b"garbage")
    with pytest.raises(CheckpointError):
        cli.main(["evaluate", "--checkpoint", str(ckpt), "--debug"])
    with pytest.raises(CheckpointError):
        cli.main(["--debug", "evaluate", "--checkpoint", str(ckpt)])
    monkeypatch.setenv("ENTROPYCTL_DEBUG", "1")
    with pytest.raises(CheckpointError):
        cli.main(["evaluate", "--checkpoint", str(ckpt)])


def test_dataset_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from entropyctl.models.config import ModelConfig
    from entropyctl.models.warm_start import pretrain

    model_dir = pretrain(ModelConfig.model_validate(tiny_config().model.model_dump()))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1", "answer": "2"}\n{"problem": oops\n')
    status, err = _cli(["evaluate", "--checkpoint", str(model_dir), "--data", str(bad), *_set(TINY)], capsys)
    assert status == 2
    assert err.count("\n") == 1 and "bad.jsonl:2: invalid JSON" in err, err


def _set(overrides: list[str]) -> list[str]:
    return [arg for o in overrides if not o.startswith("model.") for arg in ("--set", o)]


class _FullDisk:
    """Pickled inside a checkpoint, fails the write part-way as a full disk would."""

    def __reduce__(self) -> Any:
        raise OSError(28, "No space left on device")


def test_a_failed_save_leaves_the_previous_checkpoint_whole_and_no_temp_file(tmp_path: Path) -> None:
    """A kill or a full disk during a save: the previous last.ckpt stays as it was (Lightning's writer
    moved a temp file from $TMPDIR, a copy into the target across file systems), and no temp file is left
    (write_json_atomic left one per failed write)."""
    import json

    from entropyctl.trainer.module import AtomicCheckpointIO
    from entropyctl.trainer.run_dir import write_json_atomic

    target = tmp_path / "last.ckpt"
    writer = AtomicCheckpointIO()
    writer.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)
    before = target.read_bytes()
    with pytest.raises(OSError, match="No space left"):
        writer.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "x": _FullDisk()}, target)
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    summary = tmp_path / "summary.json"
    write_json_atomic(summary, {"status": "running"})

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", full)  # the data reaches the disk at the flush: there it is full
        with pytest.raises(OSError, match="No space left"):
            write_json_atomic(summary, {"status": "finished"})
    assert json.loads(summary.read_text()) == {"status": "running"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "summary.json"]


def test_the_trainer_writes_its_checkpoints_beside_them_and_renames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every .ckpt of a run is renamed into place from beside it (one file system: atomic), none goes
    through $TMPDIR."""
    import tempfile

    from entropyctl.trainer.run import run_training

    elsewhere = tmp_path / "tmpdir"
    elsewhere.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))
    renamed: list[tuple[Path, Path]] = []
    replace = os.replace

    def recording(src: Any, dst: Any) -> None:
        renamed.append((Path(src), Path(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", recording)
    config = tiny_config(
        "trainer.steps=2", "trainer.checkpoint_every=1", "eval.before=false", "eval.after=false"
    )
    run_training(config, tmp_path / "run")
    ckpts = tmp_path / "run" / "checkpoints"
    into = [(src.parent, dst.name) for src, dst in renamed if dst.suffix == ".ckpt"]
    assert into == [(ckpts, n) for n in ("step-000001.ckpt", "last.ckpt", "step-000002.ckpt", "last.ckpt")]
    assert not list(elsewhere.iterdir()) and not [p for p in ckpts.iterdir() if p.name.startswith(".")]


def test_a_refused_run_into_a_new_time_stamped_directory_leaves_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --out the run directory is a new time-stamped one under output_dir; a refused resume left
    it holding run.lock (the CLI's rmdir of an empty folder failed silently)."""
    runs = tmp_path / "runs"
    status, err = _cli(
        ["train", "--resume", str(tmp_path / "missing.ckpt"), *_set([*TINY, f"output_dir={runs}"])], capsys
    )
    assert status == 2 and err.count("\n") == 1, err
    assert list(runs.iterdir()) == []
