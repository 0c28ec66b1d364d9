"""What a user gets wrong fails when the config is loaded, in one line that names the field: reward and
data options (checked against the signature of what takes them), a reward module that cannot be
imported, an error an override caused elsewhere, a string ``--set`` YAML would read as a mapping, a
misspelt controller field, another tool's name for the clip range."""

from __future__ import annotations

import inspect
import re
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

from entropyctl import cli
from entropyctl.config import (
    ConfigError,
    apply_overrides,
    default_config_path,
    load_run_config,
    suggest_field,
)
from entropyctl.config.loading import FOREIGN_NAMES, KNOWN_RENAMES
from entropyctl.rewards import registry
from entropyctl.rewards.registry import MathReward, check_reward, get_reward, reward_options

FILE = ["data.source=file", "data.path=examples/own_data/sums.jsonl"]


def one_line(overrides: list[str], path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_run_config(path, overrides)
    assert len(info.value.errors) == 1, info.value.errors
    return str(info.value)


# --- 1. options and reward modules, at load


def test_an_unknown_reward_option_names_the_ones_the_reward_takes() -> None:
    takes = [name for name in inspect.signature(MathReward).parameters]  # from the class itself
    assert one_line(["reward.options.timout=3"]) == (
        "--set reward.options.timout=3: unknown option of reward 'math'; did you mean timeout? "
        f"(it takes: {', '.join(takes)})"
    )
    message = one_line(["reward.name=exact", "reward.options.timeout=3"])
    assert "unknown option of reward 'exact'" in message and "(it takes: extract)" in message
    # a whole mapping set at once: the key inside it is named
    assert one_line(["reward.options={timout: 3}"]).startswith(
        "--set reward.options={timout: 3}: reward.options.timout: unknown option of reward 'math'"
    )
    # the accepted ones still load, and get_reward refuses the same keys with the same words
    assert (
        load_run_config(None, ["reward.options={timeout: 2, num_workers: 2}"]).reward.options["timeout"] == 2
    )
    with pytest.raises(
        ValueError, match=r"options\.timout: unknown option of reward 'math'; did you mean timeout"
    ):
        get_reward("math", timout=3)


def test_a_reward_factory_taking_any_keyword_accepts_any_option(monkeypatch: pytest.MonkeyPatch) -> None:
    def anything(**kwargs: Any) -> Any:
        raise AssertionError("not built at load")

    monkeypatch.setitem(registry._REGISTRY, "anything", anything)
    assert reward_options("anything") is None
    assert check_reward("anything", {"whatever": 1, "timeout": 2}) == []
    assert reward_options("a.module:function") == ["timeout", "num_workers"]


def test_an_unknown_data_option_names_the_ones_the_loader_takes() -> None:
    from entropyctl.data.loaders import load_math_dataset

    # keep_columns is the trainer's (whether the reward reads the row): accepted, it was overwritten
    takes = [p for p in list(inspect.signature(load_math_dataset).parameters)[1:] if p != "keep_columns"]
    assert one_line([*FILE, "data.options.keep_columns=true"]).startswith(
        "--set data.options.keep_columns=true: unknown option of the file loader"
    )
    message = one_line([*FILE, "data.options.limt=5"])
    assert message == (
        "--set data.options.limt=5: unknown option of the file loader; did you mean limit? "
        f"(it takes: {', '.join(takes)})"
    )
    assert load_run_config(None, [*FILE, "data.options.limit=5"]).data.options == {"limit": 5}
    # the synthetic source reads no option: one set there would be ignored
    assert one_line(["data.options.limit=5"]).startswith(
        "--set data.options.limit=5: data.options: not read when data.source is 'synthetic'"
    )


def test_a_reward_module_that_cannot_be_imported_fails_at_load_naming_it() -> None:
    message = one_line(["reward.name=no_such_module_xyz.rewards:score"])
    assert message.startswith(
        "--set reward.name=no_such_module_xyz.rewards:score: cannot import module 'no_such_module_xyz.rewards' "
        "(ModuleNotFoundError: No module named 'no_such_module_xyz')"
    )
    assert "PYTHONPATH" in message
    assert "has no attribute 'nope'" in one_line(["reward.name=operator:nope"])
    assert "not callable" in one_line(["reward.name=math:pi"])
    # a function reward takes the options of its worker pool
    assert "did you mean num_workers?" in one_line(["reward.name=operator:eq", "reward.options.num_worker=2"])


def test_a_reward_module_beside_the_user_but_off_the_import_path_says_to_put_it_on_pythonpath(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_rewards_xyz").mkdir()
    (tmp_path / "my_rewards_xyz" / "score.py").write_text("def near(completion, answer):\n    return 1.0\n")
    monkeypatch.chdir(tmp_path)
    # as under the `entropyctl` script: the current directory is not on the import path
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p and Path(p).resolve() != tmp_path.resolve()])
    message = one_line(["reward.name=my_rewards_xyz.score:near"])
    assert (
        "my_rewards_xyz/score.py is under the current directory, which is not on the import path" in message
    )
    assert "PYTHONPATH=." in message
    monkeypatch.syspath_prepend(str(tmp_path))
    assert (
        load_run_config(None, ["reward.name=my_rewards_xyz.score:near"]).reward.name
        == "my_rewards_xyz.score:near"
    )


def test_a_module_with_relative_imports_named_without_its_package_gets_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pkg_rel_xyz").mkdir()
    (tmp_path / "pkg_rel_xyz" / "__init__.py").write_text("")
    (tmp_path / "pkg_rel_xyz" / "helpers.py").write_text("ONE = 1.0\n")
    (tmp_path / "pkg_rel_xyz" / "score_rel_xyz.py").write_text(
        "from .helpers import ONE\n\ndef near(completion, answer):\n    return ONE\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "pkg_rel_xyz"))  # the module's own folder: wrong one
    message = one_line(["reward.name=score_rel_xyz:near"])
    assert "relative import" in message and "package.module:function" in message and "PYTHONPATH" in message
    monkeypatch.syspath_prepend(str(tmp_path))
    assert (
        load_run_config(None, ["reward.name=pkg_rel_xyz.score_rel_xyz:near"]).reward.name
        == "pkg_rel_xyz.score_rel_xyz:near"
    )


def test_built_in_rewards_import_nothing_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    imported: list[str] = []
    real = registry._import_function

    def spy(path: str) -> Any:
        imported.append(path)
        return real(path)

    monkeypatch.setattr(registry, "_import_function", spy)
    load_run_config(None)
    load_run_config(None, ["reward.name=exact"])
    reasoning_gym = [
        "data.source=reasoning_gym",
        "data.name=chain_sum",
        "data.levels=null",
        "reward.name=reasoning_gym",
    ]
    load_run_config(None, reasoning_gym)
    assert imported == []
    load_run_config(None, ["reward.name=operator:eq"])
    assert imported == ["operator:eq"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("reward.options.timout=3", "unknown option of reward 'math'; did you mean timeout?"),
        ("reward.name=no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
    ],
)
def test_the_cli_refuses_them_before_the_run_directory_is_written(
    override: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    assert cli.main(["train", "--set", override, "--out", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"entropyctl train: error: --set {override}: ") and expected in err
    assert err.count("\n") == 1
    assert not run_dir.exists()


# --- 3. an error an override caused elsewhere names the overrides


def test_an_error_elsewhere_is_told_against_the_file_with_the_overrides() -> None:
    default = default_config_path()
    with pytest.raises(ConfigError) as info:
        load_run_config(None, ["eval.n_samples=4"])
    assert str(info.value) == (
        f"invalid configuration in {default} with --set eval.n_samples=4:\n"
        "  eval.ks: each k must be in [1, eval.n_samples = 4] (got [1, 4, 8])"
    )
    with pytest.raises(ConfigError) as info:
        load_run_config(None, ["data.source=file", "trainer.steps=3"])
    assert str(info.value).startswith(
        f"invalid configuration in {default} with --set data.source=file --set trainer.steps=3:\n"
        "  data.path: required when data.source is 'file'"
    )
    # an element of a list an override set is told against that override
    assert one_line(["optim.betas=[0.9,1.0]"]) == "--set optim.betas=[0.9,1.0]: optim.betas[1]: must be < 1"


def test_without_overrides_the_file_alone_is_named(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("eval:\n  n_samples: 4\n")
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    assert str(info.value).startswith(f"invalid configuration in {path}:\n  eval.ks:")
    with pytest.raises(ConfigError) as info:
        load_run_config(path, ["trainer.steps=3"])
    assert str(info.value).startswith(
        f"invalid configuration in {path} with --set trainer.steps=3:\n  eval.ks:"
    )


# --- 4. a string field takes the text as written


@pytest.mark.parametrize(
    ("override", "field", "value"),
    [
        (
            "data.template=Q: {prompt}",
            "template",
            "Q: {prompt}",
        ),  # a mapping to YAML (docs/data.md's example)
        ("data.template={prompt} A:", "template", "{prompt} A:"),
        ("data.template={prompt}", "template", "{prompt}"),
        ('data.template="Q: {prompt}"', "template", "Q: {prompt}"),  # quoted: YAML's string
        ("data.system=42", "system", "42"),
        ("data.template=null", "template", None),  # null stays None where the field may be None
    ],
)
def test_a_string_field_takes_the_text_as_written(override: str, field: str, value: Any) -> None:
    # data.system is read with the chat template only
    assert getattr(load_run_config(None, [override, "data.chat_template=true"]).data, field) == value


def test_only_string_fields_take_the_text() -> None:
    assert load_run_config(None, ["trainer.precision=16"]).trainer.precision == "16"  # str: "16", not 16
    assert load_run_config(None, ["run_name=2024"]).run_name == "2024"
    assert load_run_config(None, ["data.levels=[1,2]"]).data.levels == [1, 2]  # not a string field: YAML
    with pytest.raises(ConfigError, match="trainer.steps"):
        load_run_config(None, ["trainer.steps=Q: {x}"])  # an int field still refuses the mapping
    # without the schema (apply_overrides alone) the value is YAML's
    assert apply_overrides({}, ["data.template=Q: {prompt}"])["data"]["template"] == {"Q": {"prompt": None}}


# --- 5. a misspelt controller field


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["controller.tua=0.3"],
            "--set controller.tua=0.3: unknown field; did you mean controller.anchor.tau?",
        ),
        (
            ["controller.alpha0=0.1"],
            "--set controller.alpha0=0.1: unknown field; did you mean controller.alpha_0?",
        ),
        (
            ["controller.update.stpe=0.1"],
            "--set controller.update.stpe=0.1: unknown field; did you mean controller.update.step?",
        ),
        (
            ["controller.name=fixed", "controller.alpah=0.01"],
            "--set controller.alpah=0.01: unknown field; did you mean controller.alpha?",
        ),
        (
            ["controller.update.rule=additive", "controller.update.ete=0.01"],
            "--set controller.update.ete=0.01: unknown field; did you mean controller.update.eta?",
        ),
        (
            ["controller.zzzz=1"],
            "--set controller.zzzz=1: unknown field "
            "(valid fields: name, alpha_0, update, anchor, clip_low, clip_high, allocation)",
        ),
    ],
)
def test_an_unknown_controller_field_gets_the_closest_one(overrides: list[str], message: str) -> None:
    assert one_line(overrides) == message


def test_a_misspelt_controller_field_in_a_file_gets_the_closest_one(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("controller:\n  name: aer\n  tua: 0.3\n")
    with pytest.raises(
        ConfigError, match=r"controller\.tua: unknown field; did you mean controller\.anchor\.tau\?"
    ):
        load_run_config(path)
    assert load_run_config(None, ["controller.anchor.tau=0.3"]).controller.anchor.tau == 0.3  # type: ignore[attr-defined]
    assert suggest_field("controller.tua") == "controller.anchor.tau"  # the default controller, aer


# --- 6. other tools' names for the clip range


@pytest.mark.parametrize(
    ("field", "pointer"),
    [
        ("algorithm.clip_high", "controller.clip_high"),
        ("algorithm.epsilon", "controller.clip_low and controller.clip_high"),
        ("algorithm.clip_ratio", "controller.clip_low and controller.clip_high"),
    ],
)
def test_other_tools_clip_names_point_to_the_controller(field: str, pointer: str) -> None:
    assert one_line([f"{field}=0.28"]) == f"--set {field}=0.28: unknown field; did you mean {pointer}?"


def _target_paths(target: str) -> list[str]:
    """The field paths a pointer names: ``a.b and c.d (a note)``, ``a.b, c.d and e.f`` → ``a.b``, ``c.d``..."""
    return re.split(r", | and ", target.split(" (")[0])


def _has_field(path: str) -> bool:
    """Whether ``path`` is a field of the default config (or of one with the optional sections that hold
    pointed-at fields), or, for ``controller.*``, of some controller's config; a key under a free-form
    ``options`` mapping counts as its mapping."""
    if ".options." in path:
        path = path.split(".options.")[0] + ".options"
    section, _, rest = path.partition(".")
    configs = [load_run_config(None), load_run_config(None, ["algorithm.rollout_correction.mode=monitor"])]
    if section == "controller":
        configs += [load_run_config(None, [f"controller.name={name}"]) for name in ("fixed", "clip_higher")]
    for config in configs:
        node: Any = config.model_dump()[section]
        for part in rest.split("."):
            node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
        if node is not KeyError:
            return True
    return False


def test_every_pointer_names_a_field_we_have() -> None:
    from entropyctl.cli import build_parser

    train = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "train")[
        1
    ]  # type: ignore[union-attr]
    flags = {flag for action in train._actions for flag in action.option_strings}
    for target in [*KNOWN_RENAMES.values(), *FOREIGN_NAMES.values()]:
        if target.startswith("--"):  # a command-line option of `entropyctl train` (--out, --resume)
            assert target.split()[0] in flags, target
            continue
        for path in _target_paths(target):
            assert _has_field(path), (target, path)


def _our_field_names() -> set[str]:
    from pydantic import BaseModel

    from entropyctl.config import RunConfig
    from entropyctl.controllers.registry import available_controllers, get_config_class

    names: set[str] = set()

    def walk(model: type[BaseModel], depth: int) -> None:
        for name, field in model.model_fields.items():
            names.add(name)
            for kind in (field.annotation, *typing.get_args(field.annotation)):
                for inner in (kind, *typing.get_args(kind)):
                    if isinstance(inner, type) and issubclass(inner, BaseModel) and depth < 4:
                        walk(inner, depth + 1)

    walk(RunConfig, 0)
    for name in available_controllers():
        walk(get_config_class(name), 0)
    return names


def test_no_foreign_name_is_a_field_of_ours() -> None:
    """A foreign name is matched on the last part of an unknown path: were it also one of our own field
    names, a misplaced field of ours would be pointed at another one."""
    assert not set(FOREIGN_NAMES) & _our_field_names()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # TRL's flat names, at the top level or in a section
        ("num_generations=8", "did you mean rollout.group_size?"),
        ("algorithm.num_iterations=2", "did you mean algorithm.ppo_epochs?"),
        ("rollout.max_completion_length=64", "did you mean rollout.max_new_tokens?"),
        # where difflib pointed at the wrong field: trainer.steps, trainer.save_last, micro_batch_size
        ("trainer.eval_steps=10", "did you mean eval.every?"),
        ("trainer.save_steps=10", "did you mean trainer.checkpoint_every?"),
        ("algorithm.ppo_mini_batch_size=4", "did you mean algorithm.mini_batches (a number of mini-batches"),
        # verl's nested sections
        ("actor_rollout_ref.actor.clip_ratio_high=0.28", "clip_ratio_high → controller.clip_high"),
        ("actor_rollout_ref.actor.entropy_coeff=0.01", "entropy_coeff → controller.name (fixed"),
        # OpenRLHF
        ("n_samples_per_prompt=8", "did you mean rollout.group_size?"),
        # verl's commonest nested names, found by their last parts (once the list of fields, no hint)
        ("actor_rollout_ref.rollout.n=8", "n → rollout.group_size"),
        ("actor_rollout_ref.actor.optim.lr=1e-6", "lr → optim.lr"),
        ("actor_rollout_ref.actor.ppo_epochs=2", "ppo_epochs → algorithm.ppo_epochs"),
        ("actor_rollout_ref.rollout.temperature=0.7", "temperature → rollout.temperature"),
        ("trainer.default_local_dir=ckpts", "did you mean --out"),
        ("data.val_batch_size=8", "did you mean eval.batch_size?"),  # difflib said data.eval_path
        # TRL's flat names and our own fields in another section
        ("temperature=0.7", "did you mean rollout.temperature or eval.temperature?"),
        ("lr=1e-6", "did you mean optim.lr?"),
        ("dynamic_sampling=true", "did you mean rollout.dynamic_sampling?"),
        # and not where a name of ours misleads: in our own sections, or next to a spelling slip
        ("rollout.batch_size=8", "unknown field (valid fields: engine"),
        ("name=myrun", "did you mean run_name?"),
        ("contoller.name=aer", "did you mean controller?"),
    ],
)
def test_other_trainers_names_point_to_ours(override: str, message: str) -> None:
    assert message in one_line([override])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        # a section of theirs: its options' pointers too (the section's alone pointed away from the count)
        ("algorithm.filter_groups.max_num_gen_batches=10", "max_num_gen_batches → rollout.max_refills"),
        # validation's sampling is eval's, not the training rollouts' (top_p pointed at rollout.top_p)
        ("actor_rollout_ref.rollout.val_kwargs.top_p=0.9", "val_kwargs → eval.temperature, eval.top_p"),
        ("lr_warmup_steps=10", "optim.warmup_steps (in optimizer steps"),
        ("train_batch_size=128", "OpenRLHF's, responses per optimizer step, is algorithm.mini_batches"),
        (
            "init_kl_coef=0.01",
            "the nearest to OpenRLHF's KL in the reward, which adds its KL per token after",
        ),
        ("algorithm.use_kl_in_reward=true", "algorithm.kl_reward_coef (above 0"),
        ("kl_loss_type=mse", "verl's kl, mse and abs are our k1, k2 and abs"),
        ("kl_loss_type=k3", "verl's low_var_kl and k3, both clamped, are our low_var_kl"),
        ("max_epochs=2", "algorithm.ppo_epochs"),
    ],
)
def test_verl_and_openrlhf_names_point_to_what_they_mean_here(override: str, expected: str) -> None:
    """A practitioner's port of a verl DAPO and an OpenRLHF REINFORCE++ recipe: the pointers that sent
    them to the wrong field or left out a difference in units."""
    message = one_line([override])
    assert expected in message, message
    if "val_kwargs" in override:
        assert "rollout.top_p" not in message


def test_the_evaluations_sample_with_their_own_top_p_and_top_k(tmp_path: Path) -> None:
    """eval.top_p / eval.top_k (verl's val_kwargs): the held-out evaluations' truncation apart from the
    training rollouts'; None, the default, is the rollout's (as every run before them)."""
    from trainer_helpers import tiny_config

    from entropyctl.trainer.run import build_module

    config = tiny_config("rollout.top_p=0.5", "rollout.top_k=3", "eval.top_p=0.9", "eval.top_k=0")
    module = build_module(config, tmp_path)
    evaluation, training = module._sampling(7, eval_mode=True), module._sampling(7)
    assert (evaluation.top_p, evaluation.top_k, training.top_p, training.top_k) == (0.9, 0, 0.5, 3)
    same = tiny_config("rollout.top_p=0.5", "rollout.top_k=3").eval_sampling()
    assert (same["top_p"], same["top_k"]) == (0.5, 3)
    note = load_run_config(None, ["rollout.overlong_buffer=2"]).inert_settings()
    assert any("rollout.overlong_buffer 2 has no effect" in line for line in note)


@pytest.mark.parametrize("field", ["levels=[1]", "weights=[1.0]"])
def test_synthetic_warm_start_levels_with_a_reasoning_gym_task_are_refused_at_load(field: str) -> None:
    """They were refused only inside the warm start, after the run directory was written, with a
    traceback (docs/tasks.md promised a refusal)."""
    config = Path(__file__).resolve().parents[1] / "configs" / "rg_chain_sum.yaml"
    with pytest.raises(ConfigError, match=f"model.pretrain.{field.split('=')[0]}.* draws from data.levels"):
        load_run_config(config, [f"model.pretrain.{field}"])
