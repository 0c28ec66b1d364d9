"""Reading the run config of a run: its file, ``--set`` overrides, and errors in the user's terms.

An error a ``--set`` caused is reported against it (``--set controller.tau=-1: must be > 0``); any other
against the file with the overrides applied. An unknown field gets the closest valid one
(:func:`suggest_field`: a typo, another tool's name for it) or the list of valid fields. Where a field
is a string, ``--set`` takes the text as written when YAML would read it as something else
(``data.template=Q: {prompt}`` is a mapping to YAML).
"""

from __future__ import annotations

import difflib
import functools
import re
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from entropyctl.config.overrides import apply_overrides, load_yaml
from entropyctl.config.run import (
    VARIANT_KEYS,
    RunConfig,
    default_config_path,
    drop_other_variant,
    fill_absent,
    parse_run_config,
    switches,
)
from entropyctl.controllers.config import ControllerConfig
from entropyctl.validation import ConfigError

__all__ = ["FOREIGN_NAMES", "KNOWN_RENAMES", "load_run_config", "suggest_field", "switch_variants"]


def load_run_config(
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    *,
    written: bool = False,
    scores: bool = True,
    shaping: bool = True,
) -> RunConfig:
    """Read a run config (``None``: the embedded default), apply ``key=value`` overrides, validate.

    An override of ``controller.name`` to another controller replaces the file's controller section.
    An override of a string field whose value YAML reads as another type is the text as written.
    ``written``: the file is a run directory's ``config.yaml``; the fields it lacks read as
    :data:`~entropyctl.config.run.ABSENT_MEANS` says (what that run ran with), not as today's defaults.
    ``scores=False``: for a command that scores nothing (``entropyctl export``), the file's reward section
    is not read (a ``package.module:function`` reward need not be importable here); the config's reward
    is the built-in verifier of its data source. ``shaping=False``: for a command that scores with the
    verifier alone (``entropyctl evaluate``), ``reward.shaping`` is not read (its plugins need not be
    importable).
    """
    source = Path(path) if path is not None else default_config_path()
    data = load_yaml(source)
    if written:
        data = fill_absent(data)
    if not scores:
        gym = isinstance(data.get("data"), Mapping) and data["data"].get("source") == "reasoning_gym"
        data = {**data, "reward": {"name": "reasoning_gym" if gym else "math"}}
    elif not shaping and isinstance(data.get("reward"), Mapping):
        data = {**data, "reward": {**data["reward"], "shaping": []}}
    overrides = list(overrides)
    switch_variants(data, overrides)
    base = data
    data = apply_overrides(base, overrides, text=lambda key: _is_text_field(key, base))
    try:
        return parse_run_config(data, source=str(source), written=written)
    except ConfigError as err:
        raise _name_the_overrides(err, overrides, str(source), data) from None


def switch_variants(data: dict[str, Any], overrides: Iterable[str]) -> None:
    """Before ``overrides`` are applied to ``data`` (in place): `--set controller.name=fixed` switches
    controller, so the file's fields of the previous one (tau, rho, ...), unknown to the new one, go and it
    starts from its own defaults; a part's variant key (``controller.update.rule``, ...) does the same for
    its part. An override to the value the section already resolves to keeps the file's fields."""
    for override in overrides:
        key, _, value = override.partition("=")
        current = data.get("controller")
        if (
            key.strip() == "controller.name"
            and isinstance(current, Mapping)
            and switches(data, "controller.name", current.get("name"), value)
        ):
            data["controller"] = {"name": value.strip()}
        elif key.strip() in VARIANT_KEYS:
            drop_other_variant(data, key.strip(), value.strip())


# --- the schema, walked by field path ---


def _field_model(field: FieldInfo, value: Any) -> type[BaseModel] | None:
    """The model ``value`` of ``field`` is read as: a section's class; for a controller, the config its
    ``name`` picks (else the default's); for a union of variants (a controller's update rule), the one
    whose tag ``value`` holds (else the default's). None: not a model."""
    annotation = field.annotation
    factory = field.default_factory
    if isinstance(annotation, type) and issubclass(annotation, ControllerConfig):
        name = value.get("name") if isinstance(value, Mapping) else None
        if name is None and factory is not None:
            name = getattr(factory(), "name", None)  # type: ignore[call-arg]
        if not isinstance(name, str):
            return annotation
        from entropyctl.controllers.registry import get_config_class

        try:
            return get_config_class(name)
        except KeyError:
            return None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    variants = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    if isinstance(value, Mapping):
        for variant in variants:
            for name, inner in variant.model_fields.items():
                tags = typing.get_args(inner.annotation)
                if typing.get_origin(inner.annotation) is typing.Literal and value.get(name) in tags:
                    return variant
    if isinstance(factory, type) and factory in variants:
        return factory
    return variants[0] if variants else None


def _model_at(parts: Sequence[str], data: Any) -> type[BaseModel] | None:
    """The model of the section at ``parts`` (``["controller", "update"]``) of the config ``data``."""
    model: type[BaseModel] = RunConfig
    node = data
    for part in parts:
        field = model.model_fields.get(part)
        node = node.get(part) if isinstance(node, Mapping) else None
        inner = _field_model(field, node) if field is not None else None
        if inner is None:
            return None
        model = inner
    return model


def _split(path: str) -> tuple[list[str], str]:
    head, _, last = path.rpartition(".")
    return (head.split(".") if head else []), last


#: ``data.options`` keys the file loader reads as text (``load_math_dataset``'s string arguments): ``--set
#: 'data.options.template=Q: {prompt}'`` is that text, not the mapping YAML would read
_TEXT_OPTIONS = (
    "data.options.template",
    "data.options.prompt_field",
    "data.options.answer_field",
    "data.options.level_field",
)


def _is_text_field(key: str, data: Any) -> bool:
    """Whether the field at ``key`` is a string (``str`` or ``str | None``) in the config ``data``."""
    if key.strip() in _TEXT_OPTIONS:
        return True
    parts, last = _split(key)
    model = _model_at(parts, data)
    field = model.model_fields.get(last) if model is not None else None
    if field is None:
        return False
    kinds = typing.get_args(field.annotation) or (field.annotation,)
    return str in kinds and all(kind in (str, type(None)) for kind in kinds)


def _fields_near(path: str, data: Any) -> list[str]:
    """The fields of the section holding ``path``; in a controller, its parts' fields too
    (``anchor.tau``: ``controller.tau`` is read as it)."""
    parts, _ = _split(path)
    model = _model_at(parts, data)
    if model is None:
        return []
    names = list(model.model_fields)
    if issubclass(model, ControllerConfig):
        for name in list(names):
            inner = _model_at([*parts, name], data)
            if inner is not None and not issubclass(inner, ControllerConfig):
                names += [f"{name}.{field}" for field in inner.model_fields]
    return names


# --- naming what is wrong ---


#: fields users reach for under another name, by full path (an older entropyctl's spelling, tools outside RL);
#: other RL trainers' option names are in :data:`FOREIGN_NAMES`
KNOWN_RENAMES = {
    "trainer.max_epochs": "trainer.steps",  # Lightning's
    "trainer.num_steps": "trainer.steps",
    "rollout.n": "rollout.group_size",
    # the PPO clip range is the controller's (clip_higher and the token-level controllers move it)
    "algorithm.clip_low": "controller.clip_low",
    "algorithm.clip_high": "controller.clip_high",
    "algorithm.cliprange": "controller.clip_low and controller.clip_high",  # TRL's PPO
    "algorithm.clip_range": "controller.clip_low and controller.clip_high",  # stable-baselines3
}


#: other trainers' option names (TRL's ``GRPOConfig`` and its ``TrainingArguments``, verl's
#: ``ppo_trainer.yaml``, OpenRLHF's ``train_ppo_ray`` flags), matched on the last part of an unknown field
#: wherever it is set (``--set num_generations=8``, ``trainer.save_steps``, verl's nested
#: ``actor_rollout_ref.actor.clip_ratio_high``); a note in parentheses where the meaning differs. None of
#: them is a field name of ours (a test checks).
FOREIGN_NAMES = {
    # TRL
    "num_generations": "rollout.group_size",
    "num_iterations": "algorithm.ppo_epochs",
    "max_completion_length": "rollout.max_new_tokens",
    "steps_per_generation": "algorithm.mini_batches (steps_per_generation / gradient_accumulation_steps)",
    "generation_batch_size": "rollout.prompts_per_step (prompts per process; × rollout.group_size responses)",
    "per_device_train_batch_size": "algorithm.micro_batch_size (responses per forward/backward)",
    "gradient_accumulation_steps": "algorithm.micro_batch_size (a mini-batch is accumulated over micro-batches)",
    "mask_truncated_completions": "rollout.overlong (mask)",
    "top_entropy_quantile": "controller.name (high_entropy_tokens)",
    "entropy_coef": "controller.name (fixed, with controller.alpha)",
    "use_adaptive_entropy": "controller.update.apply (at_or_below_target; TRL's rule: target, anchor.mode absolute, update.rule sign)",
    "vllm_importance_sampling_correction": "algorithm.rollout_correction",
    "vllm_importance_sampling_mode": "algorithm.rollout_correction.mode",
    "vllm_importance_sampling_cap": "algorithm.rollout_correction.clip_max",
    "vllm_importance_sampling_clip_max": "algorithm.rollout_correction.clip_max",
    "vllm_importance_sampling_clip_min": "algorithm.rollout_correction.clip_min",
    "importance_sampling_level": "algorithm.importance_level",
    "use_vllm": "rollout.engine (vllm)",
    "vllm_gpu_memory_utilization": "rollout.options.gpu_memory_utilization",
    "learning_rate": "optim.lr",
    "max_grad_norm": "optim.grad_clip",
    "adam_beta1": "optim.betas",
    "adam_beta2": "optim.betas",
    "adam_epsilon": "optim.eps",
    "lr_scheduler_type": "optim.schedule",
    "warmup_ratio": "optim.warmup_steps (a number of steps, not a ratio)",
    "max_steps": "trainer.steps",
    "num_train_epochs": "trainer.steps (with data.order: epochs, steps × prompts_per_step × devices / rows)",
    "shuffle_dataset": "data.order (epochs)",
    "save_steps": "trainer.checkpoint_every",
    "save_total_limit": "trainer.keep_checkpoints",
    "eval_steps": "eval.every",
    "logging_steps": "trainer.log_every",
    "num_generations_eval": "eval.n_samples",
    "report_to": "trainer.wandb and trainer.tensorboard",
    "bf16": "trainer.precision (bf16-mixed)",
    "beta": "algorithm.kl_coef",
    "sync_ref_model": "algorithm.ref_sync_steps (TRL's ref_model_sync_steps; null: off)",
    "ref_model_sync_steps": "algorithm.ref_sync_steps (RL steps here, optimizer steps in TRL)",
    "ref_model_mixup_alpha": "algorithm.ref_sync_mix",
    "epsilon": "controller.clip_low and controller.clip_high",
    "epsilon_high": "controller.clip_high",
    "loss_type": "algorithm.loss_agg",
    "scale_rewards": "algorithm.advantage_scale",
    "reward_funcs": "reward.name and reward.shaping",
    "custom_reward_function": "reward.name (package.module:function; a parameter named info gets the row)",
    "reward_weights": "reward.shaping",
    # verl
    "entropy_coeff": "controller.name (fixed, with controller.alpha)",
    "use_kl_loss": "algorithm.kl_coef (above 0)",
    "kl_loss_coef": "algorithm.kl_coef",
    "kl_loss_type": "algorithm.kl_estimator (verl's low_var_kl and k3, both clamped, are our low_var_kl; our k3 is "
    "TRL's, unclamped; verl's kl, mse and abs are our k1, k2 and abs)",
    "kl_ctrl": "algorithm.kl_reward_coef (kl_ctrl.kl_coef); type adaptive: algorithm.kl_reward_target "
    "(kl_ctrl.target_kl) and algorithm.kl_reward_horizon (kl_ctrl.horizon)",
    "target_kl": "algorithm.kl_reward_target (with algorithm.kl_reward_coef above 0)",
    "use_kl_in_reward": "algorithm.kl_reward_coef (above 0; the loss term is algorithm.kl_coef)",
    "kl_penalty": "algorithm.kl_reward_coef (the KL in the reward is k1 here, verl's kl_penalty: kl; the loss "
    "term's estimator is algorithm.kl_estimator)",
    "clip_ratio": "controller.clip_low and controller.clip_high",
    "clip_ratio_low": "controller.clip_low",
    "clip_ratio_high": "controller.clip_high",
    "clip_ratio_c": "algorithm.dual_clip",
    "loss_agg_mode": "algorithm.loss_agg",
    "norm_adv_by_std_in_grpo": "algorithm.advantage_scale (none for false)",
    "adv_estimator": "algorithm.advantage_baseline and algorithm.advantage_scale",
    "rollout_is": "algorithm.rollout_correction",
    "ppo_mini_batch_size": "algorithm.mini_batches (a number of mini-batches, not a size)",
    "ppo_micro_batch_size": "algorithm.micro_batch_size (responses per forward/backward, per process)",
    "ppo_micro_batch_size_per_gpu": "algorithm.micro_batch_size",
    "log_prob_micro_batch_size_per_gpu": "algorithm.micro_batch_size",
    "use_dynamic_bsz": "algorithm.micro_batch_tokens (set to a budget: micro-batches by tokens)",
    "ppo_max_token_len_per_gpu": "algorithm.micro_batch_tokens (ours counts padded tokens, rows × the longest "
    "prompt + response; verl's packs without padding)",
    "log_prob_max_token_len_per_gpu": "algorithm.micro_batch_tokens",
    "filter_groups": "rollout.dynamic_sampling",
    "max_num_gen_batches": "rollout.max_refills (the generations after the first: verl's N is N − 1 here, and its 0, "
    "no limit, has none; a batch still short is filled with all-equal groups, not stopped with an error)",
    "val_kwargs": "eval.temperature, eval.top_p, eval.top_k and eval.n_samples (n → eval.n_samples; do_sample: "
    "false → eval.temperature 0 with eval.n_samples 1 and eval.ks [1])",
    "max_response_length": "rollout.max_new_tokens",
    "response_length": "rollout.max_new_tokens",
    "gpu_memory_utilization": "rollout.options.gpu_memory_utilization",
    "train_files": "data.path",
    "max_prompt_length": "data.max_prompt_tokens",
    "filter_overlong_prompts": "data.overlong_prompts (drop)",
    "prompt_max_len": "data.max_prompt_tokens",
    "val_files": "data.eval_path (a file, or a list of files: a held-out set each)",
    "val_batch_size": "eval.batch_size",
    "default_local_dir": "--out (or output_dir with run_name)",
    "resume_mode": "--resume auto (or --resume CHECKPOINT)",
    "prompt_key": "data.options.prompt_field",
    "train_batch_size": "rollout.prompts_per_step (verl's, prompts, per process here); OpenRLHF's, responses per "
    "optimizer step, is algorithm.mini_batches = prompts × group_size / its train_batch_size",
    "save_freq": "trainer.checkpoint_every",
    "test_freq": "eval.every",
    "max_actor_ckpt_to_keep": "trainer.keep_checkpoints",
    "n_gpus_per_node": "trainer.devices",
    "total_training_steps": "trainer.steps",
    "total_epochs": "trainer.steps (with data.order: epochs, steps × prompts_per_step × devices / rows)",
    "shuffle": "data.order (epochs)",
    "val_before_train": "eval.before",
    "clip_grad": "optim.grad_clip",
    "lr_warmup_steps": "optim.warmup_steps (in optimizer steps, algorithm.ppo_epochs × algorithm.mini_batches "
    "an RL step; verl counts RL steps)",
    "lr_warmup_steps_ratio": "optim.warmup_steps (a number of steps, not a ratio)",
    "warmup_style": "optim.schedule",
    "apply_chat_template_kwargs": "data.chat_template_kwargs",
    # OpenRLHF
    "n_samples_per_prompt": "rollout.group_size",
    "generate_max_len": "rollout.max_new_tokens",
    "eps_clip": "controller.clip_low and controller.clip_high",
    "entropy_loss_coef": "controller.name (fixed, with controller.alpha)",
    "dynamic_filtering": "rollout.dynamic_sampling",
    "input_key": "data.options.prompt_field",
    "label_key": "data.options.answer_field",
    "input_template": "data.template",
    "max_norm": "optim.grad_clip",
    "l2": "optim.weight_decay",
    "actor_learning_rate": "optim.lr",
    "max_ckpt_num": "trainer.keep_checkpoints",
    "init_kl_coef": "algorithm.kl_reward_coef (the nearest to OpenRLHF's KL in the reward, which adds its KL per "
    "token after the group normalisation, with returns to go: not the same update; with its --use_kl_loss, "
    "algorithm.kl_coef)",
    "kl_target": "algorithm.kl_reward_target (the adaptive β_r of the KL in the reward)",
    "kl_horizon": "algorithm.kl_reward_horizon",
    "max_epochs": "algorithm.ppo_epochs",
    "overlong_buffer_len": "rollout.overlong_buffer (with rollout.overlong: penalty)",
    "micro_train_batch_size": "algorithm.micro_batch_size",
    "rollout_batch_size": "rollout.prompts_per_step (prompts per process)",
    "eps_clip_low_high": "controller.clip_low and controller.clip_high",
    "lr_warmup_ratio": "optim.warmup_steps (a number of optimizer steps, not a ratio)",
    "num_episodes": "trainer.steps",
    "advantage_estimator": "algorithm.advantage_baseline and algorithm.advantage_scale",
    "no_advantage_std_norm": "algorithm.advantage_scale (none)",
}


def _foreign(path: str, value: Any = None) -> str | None:
    """Our field for another trainer's option at ``path`` (its last part), or for the options nested in
    ``value`` when ``path`` is another trainer's section (verl's ``actor_rollout_ref``...)."""
    name = path.rpartition(".")[2]
    own = FOREIGN_NAMES.get(name)
    if own is not None and ("→" in own or not isinstance(value, Mapping)):
        return own
    if own is None and difflib.get_close_matches(name, list(RunConfig.model_fields), n=1, cutoff=0.8):
        return None  # a slip in one of our sections' names (`contoller`): the spelling match answers it
    # a section of theirs (verl's filter_groups: {enable, max_num_gen_batches}): its options' pointers too
    found: list[str] = [] if own is None else [own]

    def leaves(node: Any, at: str, depth: int) -> None:
        if not isinstance(node, Mapping) or depth > 8:
            return
        for key, inner in node.items():
            pointer = _pointer(f"{at}.{key}")
            if pointer is not None:
                found.append(f"{key} → {pointer}")
                if "→" in pointer:  # the pointer names its section's options itself
                    continue
            leaves(inner, f"{at}.{key}", depth + 1)

    leaves(value, path, 0)
    return "; ".join(found) or None


def _pointer(path: str) -> str | None:
    """Ours for a nested option of another trainer (``actor_rollout_ref.rollout.n``): its name's
    (:data:`FOREIGN_NAMES`), the rename of its last two parts (``rollout.n``), or a field of ours those
    name (``rollout.temperature``, ``actor.optim.lr``) or the one to three fields of that name."""
    parts = path.split(".")
    name, two = parts[-1], ".".join(parts[-2:])
    if name in FOREIGN_NAMES:
        return FOREIGN_NAMES[name]
    if two in KNOWN_RENAMES:
        return KNOWN_RENAMES[two]
    if two in _own_fields():
        return two
    own = [field for field in _own_fields() if field.rpartition(".")[2] == name]
    return " or ".join(own) if own and path not in own and len(own) <= 3 else None


@functools.cache
def _own_fields() -> tuple[str, ...]:
    """Every field of the run config to two levels (``seed``, ``rollout.temperature``), for a field of ours
    written under another section (``actor_rollout_ref.rollout.temperature``, ``algorithm.dynamic_sampling``)."""
    fields: list[str] = []
    for name, info in RunConfig.model_fields.items():
        model = (
            info.annotation
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
            else None
        )
        fields += [f"{name}.{inner}" for inner in model.model_fields] if model is not None else [name]
    return tuple(fields)


def suggest_field(path: str, config: Mapping[str, Any] | None = None) -> str | None:
    """``trainer.devcies`` → ``trainer.devices``; ``trainer.max_steps`` → ``trainer.steps``;
    ``controller.tua`` → ``controller.anchor.tau``; another trainer's option (``num_generations``) →
    ours (:data:`FOREIGN_NAMES`); else None. ``config``: the config the path is in (its controller's
    name picks the controller's fields; None: the default controller)."""
    if path in KNOWN_RENAMES:
        return KNOWN_RENAMES[path]
    node: Any = config
    for part in path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    foreign = _foreign(path, node)
    if foreign is not None:
        return foreign
    by_name: dict[str, str] = {}
    for field in _fields_near(path, config):
        by_name.setdefault(field.rpartition(".")[2], field)
    parts, last = _split(path)
    close = difflib.get_close_matches(last, list(by_name), n=1, cutoff=0.6)
    if close:
        return ".".join([*parts, by_name[close[0]]])
    # a name of ours written at the top level (TRL's flat `temperature`, `lr`): the fields that hold it;
    # in one of our sections a near name or the section's fields say more than a field elsewhere
    return _pointer(path) if "." not in path else None


def _unknown_field(path: str, message: str, data: Any) -> str:
    """``unknown field`` with the closest valid field, or with the valid fields where none is close."""
    suggestion = suggest_field(path, data)
    if suggestion is not None:
        return f"unknown field; did you mean {suggestion}?"
    message = re.sub(r" \(got .*\)$", "", message, flags=re.DOTALL)
    fields = [field for field in _fields_near(path, data) if "." not in field]
    if message == "unknown field" and fields:
        return f"unknown field (valid fields: {', '.join(fields)})"
    return message


def _blame(path: str, key: str) -> str | None:
    """How an error at ``path`` is told against a ``--set`` of ``key``: "" (the field it set), "<path>: "
    (a field inside what it set, or the field holding it), None: the override did not set it."""
    if path == key:
        return ""
    # A controller's flat field may be reported inside its part: controller.tau -> controller.anchor.tau.
    error_parts, key_parts = path.split("."), key.split(".")
    if (
        len(error_parts) > len(key_parts) >= 2
        and error_parts[0] == key_parts[0]
        and error_parts[-1] == key_parts[-1]
    ):
        return ""
    if path.startswith((f"{key}.", f"{key}[")) or key.startswith(f"{path}."):
        return f"{path}: "
    return None


def _name_the_overrides(err: ConfigError, overrides: Sequence[str], source: str, data: Any) -> ConfigError:
    """Errors caused by a ``--set`` are reported against it (``--set controller.tau=-1: must be > 0``);
    the others against the file with the overrides (it is that config which is wrong, e.g. ``eval.ks``
    after ``--set eval.n_samples=4``); an unknown field gets the closest valid one."""
    keys = [(override, override.partition("=")[0].strip()) for override in overrides]
    from_set, from_file = [], []
    for line in err.errors:
        path, sep, message = line.partition(": ")
        if not sep:
            from_file.append(line)
            continue
        if message.startswith("unknown field"):
            message = _unknown_field(path, message, data)
        blamed = ((override, _blame(path, key)) for override, key in reversed(keys))
        override, where = next(((o, w) for o, w in blamed if w is not None), (None, None))
        if override is not None:
            message = re.sub(r" \(got .*\)$", "", message, flags=re.DOTALL)
            from_set.append(f"--set {override}: {where}{message}")
        else:
            from_file.append(f"{path}: {message}")
    if not from_file:
        return ConfigError(from_set)
    if overrides:
        source = f"{source} with {' '.join(f'--set {override}' for override in overrides)}"
    return ConfigError([*from_set, *from_file], source=source)
