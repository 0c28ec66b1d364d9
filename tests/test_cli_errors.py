"""The CLI's one-line errors: Lightning refusing the trainer settings on this machine is the user's to fix
(one line, exit 2); Lightning's misconfiguration error from anywhere else is a bug and keeps its traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from entropyctl import cli


def _trainer_on_4096_gpus(*args: object, **kwargs: object) -> None:
    import lightning.pytorch as pl

    # no GPU here: "No supported gpu backend found!"; on a GPU machine: too few of them
    pl.Trainer(accelerator="gpu", devices=4096, logger=False, enable_checkpointing=False)


def test_unavailable_trainer_settings_are_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from entropyctl.cli import train

    monkeypatch.setattr(train, "train_from_cli", _trainer_on_4096_gpus)
    assert cli.main(["train"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("entropyctl train: error: ") and err.count("\n") == 1
    assert "trainer.accelerator" in err and "trainer.devices" in err
    with pytest.raises(Exception, match="gpu"):  # --debug: the traceback
        cli.main(["train", "--debug"])


def test_lightnings_misconfiguration_from_elsewhere_keeps_its_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from entropyctl.cli import train

    def misused_hook(*args: object, **kwargs: object) -> None:
        raise MisconfigurationException("`self.log` was called from a hook that cannot log")

    monkeypatch.setattr(train, "train_from_cli", misused_hook)
    with pytest.raises(MisconfigurationException, match="cannot log"):
        cli.main(["train"])


def _refusals(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    mps: bool,
    accelerators: tuple[str, ...],
) -> list[str]:
    """`entropyctl train` with each accelerator on a machine without CUDA (and with MPS or not): each
    exits 2 and leaves no run directory; their error texts."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    monkeypatch.chdir(tmp_path)
    errors = []
    for accelerator in accelerators:
        out = f"runs/{accelerator}"
        assert cli.main(["train", "--out", out, "--set", f"trainer.accelerator={accelerator}"]) == 2
        errors.append(capsys.readouterr().err)
        assert not (tmp_path / out).exists()
    return errors


def test_an_accelerator_this_machine_lacks_fails_before_the_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """trainer.accelerator=gpu where torch sees no GPU: one line naming the field, and no run directory
    left to --overwrite (Lightning's own refusal comes after the directory is written)."""
    for err in _refusals(tmp_path, capsys, monkeypatch, False, ("gpu", "cuda", "mps")):
        assert err.startswith("entropyctl train: error: trainer.accelerator: torch") and err.count("\n") == 1


def test_mps_is_refused_before_the_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a Mac (MPS, no CUDA) mps, and auto / gpu which would pick it, are refused in one line: the run's
    float64 statistics would fail on the device at the first step."""
    for err in _refusals(tmp_path, capsys, monkeypatch, True, ("mps", "auto", "gpu")):
        assert "MPS is not supported" in err and "trainer.accelerator=cpu" in err and err.count("\n") == 1


def test_our_warnings_are_one_line_and_others_as_python_writes_them() -> None:
    """A data warning raised from the package reads `[entropyctl] warning: data: ...`, not Python's
    `.../trainer/run.py:302: UserWarning: ...` with the source line under it."""
    ours = str(Path(cli.__file__).parent.parent / "trainer" / "run.py")
    line = cli.format_warning(
        UserWarning("data: 8 training prompt(s) are duplicates"), UserWarning, ours, 302
    )
    assert line == "[entropyctl] warning: data: 8 training prompt(s) are duplicates\n"
    other = cli.format_warning(UserWarning("x"), UserWarning, "/elsewhere/lib.py", 7, "call()")
    assert other.startswith("/elsewhere/lib.py:7: UserWarning: x") and "call()" in other
    assert cli.format_warning(DeprecationWarning("old"), DeprecationWarning, ours, 1).startswith(ours)


@pytest.mark.parametrize("command", ["train", "ablate", "pretrain", "evaluate"])
def test_threads_below_one_is_refused_by_every_command(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """One shared --threads option: 0 (or a non-number) is argparse's one-line error, exit 2, before
    anything runs (only evaluate checked it; train passed it on to the config)."""
    for value in ("0", "two"):
        with pytest.raises(SystemExit) as stop:
            cli.main([command, "--threads", value])
        assert stop.value.code == 2
        assert "argument --threads: " in capsys.readouterr().err


def test_pretrain_out_replaces_only_an_earlier_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy is written by replacing its directory: an existing --out (or '.') lost every file in it.
    The same command run again replaces its own earlier copy; files of the user's in it stay."""
    from entropyctl.models import warm_start

    cached = tmp_path / "cache" / "model"
    cached.mkdir(parents=True)
    (cached / warm_start.METADATA_FILE).write_text('{"steps": 3}')
    (cached / "model.safetensors").write_text("weights")
    monkeypatch.setattr(warm_start, "pretrain", lambda *args, **kwargs: cached)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "important.txt").write_text("precious")
    monkeypatch.chdir(tmp_path)
    for out in ("mine", "."):
        assert cli.main(["pretrain", "--eval", "0", "--out", out]) == 2
        assert f"--out {out}: already exists and is not an earlier copy" in capsys.readouterr().err
    assert (tmp_path / "mine" / "important.txt").read_text() == "precious"
    for _ in range(2):  # the same command twice: the second replaces the first's copy
        assert cli.main(["pretrain", "--eval", "0", "--out", "copy"]) == 0
        assert (tmp_path / "copy" / "model.safetensors").read_text() == "weights"
    (tmp_path / "copy" / "notes.md").write_text("mine")
    assert cli.main(["pretrain", "--eval", "0", "--out", "copy"]) == 2
    assert "holds files no copy writes (notes.md)" in capsys.readouterr().err
    assert (tmp_path / "copy" / "notes.md").read_text() == "mine"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--set", "model.pretrain.lr=-1"], "model.pretrain.lr: must be > 0 (got -1)"),
        (["--steps", "-3"], "model.pretrain.steps: must be ≥ 0 (got -3)"),
        (["--set", "model=3"], "model: expected a mapping"),
    ],
)
def test_pretrain_bad_model_settings_are_one_line(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["pretrain", "--eval", "0", *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1
