"""`--set` overrides: errors name the override, unknown fields suggest the right one, numbers stay exact."""

from __future__ import annotations

import pytest

from entropyctl import cli
from entropyctl.config import ConfigError, apply_overrides, load_run_config, suggest_field


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["controller.tau=-1"], "--set controller.tau=-1: must be > 0"),
        (["trainer.devcies=2"], "--set trainer.devcies=2: unknown field; did you mean trainer.devices?"),
        (["trainer.max_steps=5"], "--set trainer.max_steps=5: unknown field; did you mean trainer.steps?"),
    ],
)
def test_override_errors_name_the_override(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_run_config(None, overrides)
    assert str(info.value) == message  # one line, and not the package's default.yaml


def test_several_bad_overrides_are_each_named() -> None:
    with pytest.raises(ConfigError) as info:
        load_run_config(None, ["controller.tau=-1", "trainer.steps=0", "trainer.lr=1"])
    text = str(info.value)
    assert "default.yaml" not in text
    assert "--set controller.tau=-1: must be > 0" in text and "--set trainer.steps=0: " in text
    assert "--set trainer.lr=1: unknown field" in text


def test_a_bad_field_in_a_file_still_names_the_file(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("trainer:\n  devcies: 2\n")
    with pytest.raises(ConfigError) as info:
        load_run_config(path, ["trainer.steps=3"])
    text = str(info.value)
    assert str(path) in text and "trainer.devcies: unknown field" in text and "trainer.devices" in text


def test_suggestions() -> None:
    assert suggest_field("trainer.devcies") == "trainer.devices"
    assert suggest_field("trainer.max_steps") == "trainer.steps"
    assert suggest_field("rollout.group_sise") == "rollout.group_size"
    assert suggest_field("trainer.zzzzzz") is None


def test_integers_are_parsed_exactly() -> None:
    big = 12345678901234567  # not representable as a float64
    assert apply_overrides({}, [f"seed={big}"])["seed"] == big
    assert load_run_config(None, [f"data.options.size={big}"]).data.options["size"] == big
    assert apply_overrides({}, ["a=-3", "b=1e-3", "c=2.5"]) == {"a": -3, "b": 1e-3, "c": 2.5}


def test_cli_prints_the_override_error_alone(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "--set", "controller.tau=-1"]) == 2
    assert capsys.readouterr().err == "entropyctl train: error: --set controller.tau=-1: must be > 0\n"


def test_a_full_disk_is_one_line_that_says_how_to_continue(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from entropyctl.cli import train

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train, "train_from_cli", full)
    assert cli.main(["train"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("entropyctl train: error: No space left on device.")
    assert "--resume auto" in err and "trainer.keep_checkpoints" in err

    def other(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(train, "train_from_cli", other)
    with pytest.raises(OSError, match="Input/output"):  # any other OS error keeps its traceback
        cli.main(["train"])
