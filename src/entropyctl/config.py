"""Configuration: pydantic v2 schemas, YAML loading, ``key=value`` overrides and readable errors.

The controller part (this section) holds one config class per built-in controller, each with a
``name`` literal and ``extra="forbid"``; :data:`ControllerField` is the annotated type a run config
uses for its ``controller`` field: a discriminated union over every *registered* controller config,
plugins included, resolved through the registry when validated.

Every error is reported as one line per problem, ``<field path>: <what is expected> (got <value>)``,
e.g. ``controller.alpha_0: must be ≤ alpha_max = 0.05 (got 0.5)``, wrapped in :class:`ConfigError`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, ValidationError, model_validator
from pydantic_core import core_schema

__all__ = [
    "ConfigError",
    "ControllerConfig",
    "ControllerField",
    "parse_controller_config",
    "format_validation_error",
    "load_yaml",
    "apply_overrides",
]


class ConfigError(ValueError):
    """A configuration problem. ``errors`` holds one ``"<path>: <message>"`` line per problem."""

    def __init__(self, errors: str | Sequence[str], *, source: str | None = None) -> None:
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        self.source = source
        head = f"invalid configuration in {source}:" if source else "invalid configuration:"
        if len(self.errors) == 1 and not source:
            super().__init__(self.errors[0])
        else:
            super().__init__("\n  ".join([head, *self.errors]))


# --------------------------------------------------------------------------------------------
# Error formatting
# --------------------------------------------------------------------------------------------

_FIELD_PREFIXED = re.compile(r"^([A-Za-z_][\w.]*): (.*)$", re.DOTALL)


def _loc_to_path(prefix: str, loc: Iterable[Any]) -> str:
    parts = [prefix] if prefix else []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        else:
            parts.append(str(item))
    return ".".join(parts) if parts else "<root>"


def _number(value: Any) -> str:
    # 1.0 → "1", 0.05 → "0.05": bounds read as the user wrote them.
    return f"{value:g}" if isinstance(value, float) else str(value)


def _describe(error: Mapping[str, Any], model: type[BaseModel] | None) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "greater_than_equal":
        return f"must be ≥ {_number(ctx['ge'])}"
    if kind == "greater_than":
        return f"must be > {_number(ctx['gt'])}"
    if kind == "less_than_equal":
        return f"must be ≤ {_number(ctx['le'])}"
    if kind == "less_than":
        return f"must be < {_number(ctx['lt'])}"
    if kind == "finite_number":
        return "must be a finite number"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '?')}"
    if kind == "union_tag_invalid":
        return f"must be one of {ctx.get('expected_tags', '?')}"
    if kind == "extra_forbidden":
        if model is not None:
            valid = ", ".join(model.model_fields)
            return f"unknown field (valid fields: {valid})"
        return "unknown field"
    msg = str(error["msg"])
    for noise in ("Value error, ", "Assertion failed, "):
        if msg.startswith(noise):
            msg = msg[len(noise) :]
    return msg


def _part_variants() -> Mapping[str, Mapping[str, type[BaseModel]]]:
    # The controllers' nested config parts (update / anchor / allocation), for readable error paths.
    from entropyctl.controllers.parts import PART_VARIANTS

    return PART_VARIANTS


def format_validation_error(
    error: ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> list[str]:
    """One ``"<path>: <message> (got <value>)"`` line per pydantic error.

    ``prefix`` is the path of the validated object inside the whole config (``"controller"``).
    Model-level validators in this module raise ``ValueError("<field>: <message>")``; their field
    name is moved into the path.
    """
    lines = []
    for err in error.errors(include_url=False):
        loc = list(err["loc"])
        part_model: type[BaseModel] | None = None
        # A nested controller part (update / anchor / allocation): pydantic puts the variant's tag
        # in the path (``update.relative.step``); the user wrote ``update.step``.
        for i in range(len(loc) - 1):
            variants = _part_variants().get(str(loc[i]), {})
            if isinstance(loc[i + 1], str) and loc[i + 1] in variants:
                part_model = variants[str(loc[i + 1])]
                del loc[i + 1]
                break
        if part_model is not None and len(loc) >= 2 and str(loc[-2]) in _part_variants():
            message = _describe(err, part_model)
        else:
            message = _describe(err, model if len(loc) == 1 else None)
        match = _FIELD_PREFIXED.match(message)
        if match and err["type"] == "value_error":
            loc.append(match.group(1))
            message = match.group(2)
            path = _loc_to_path(prefix, loc)
            lines.append(f"{path}: {message}")
            continue
        path = _loc_to_path(prefix, loc)
        got = err.get("input")
        if err["type"] in ("missing",) or isinstance(got, Mapping):
            lines.append(f"{path}: {message}")
        else:
            lines.append(f"{path}: {message} (got {got!r})")
    return lines


# --------------------------------------------------------------------------------------------
# Controller configs
# --------------------------------------------------------------------------------------------

NonNegativeFloat = Annotated[float, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class ControllerConfig(BaseModel):
    """Base of every controller config (built-in and plugin): a ``name`` literal, no extra keys,
    finite numbers only."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)

    name: str

    @model_validator(mode="after")
    def _check_clip_bounds(self) -> ControllerConfig:
        # The surrogate clips ρ to [1 − ε_low, 1 + ε_high]: ε_low ≥ 1 leaves no lower bound (the loss
        # refuses it in step 1), so any config with these fields (a plugin's too) is checked at load.
        clip_low = getattr(self, "clip_low", None)
        if isinstance(clip_low, float | int) and not 0.0 <= clip_low < 1.0:
            raise ValueError(
                f"clip_low: must be in [0, 1): the ratio is clipped at 1 − clip_low (got {clip_low})"
            )
        clip_high = getattr(self, "clip_high", None)
        if isinstance(clip_high, float | int) and clip_high < 0.0:
            raise ValueError(
                f"clip_high: must be ≥ 0: the ratio is clipped at 1 + clip_high (got {clip_high})"
            )
        return self


# --------------------------------------------------------------------------------------------
# Parsing through the registry
# --------------------------------------------------------------------------------------------


def parse_controller_config(obj: Any, *, prefix: str = "controller") -> ControllerConfig:
    """Validate a controller config given as a mapping (``{"name": "aer", ...}``), a bare name, or
    an already-built config. Raises :class:`ConfigError` with lines naming the field path."""
    from entropyctl.controllers.registry import available_controllers, get_config_class

    if isinstance(obj, ControllerConfig):
        return obj
    if isinstance(obj, str):
        obj = {"name": obj}
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{prefix}: must be a mapping with a 'name' key or a controller name (got {obj!r})")
    names = ", ".join(sorted(available_controllers()))
    name_path = f"{prefix}.name" if prefix else "name"
    if "name" not in obj:
        raise ConfigError(f"{name_path}: required field is missing (available: {names})")
    name = obj["name"]
    if not isinstance(name, str):
        raise ConfigError(f"{name_path}: must be a string (got {name!r}); available: {names}")
    try:
        cls = get_config_class(name)
    except KeyError:
        raise ConfigError(f"{name_path}: unknown controller {name!r} (available: {names})") from None
    try:
        return cls.model_validate(dict(obj))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, prefix, cls)) from None


def _validate_controller_field(value: Any) -> ControllerConfig:
    # Inside a larger pydantic model: re-raise as a ValidationError so pydantic prefixes the
    # location with the field name (``controller.alpha_0``).
    from entropyctl.controllers.registry import available_controllers, get_config_class

    if isinstance(value, ControllerConfig):
        return value
    if isinstance(value, str):
        value = {"name": value}
    if isinstance(value, Mapping):
        name = value.get("name")
        try:
            cls = get_config_class(name) if isinstance(name, str) else None
        except KeyError:
            cls = None
        if cls is not None:
            return cls.model_validate(dict(value))
        names = ", ".join(sorted(available_controllers()))
        raise ValueError(f"name: unknown controller {name!r} (available: {names})")
    raise ValueError(f"must be a mapping with a 'name' key or a controller name (got {value!r})")


class _ControllerFieldSchema:
    """Pydantic hook: validation dispatches on ``name`` through the registry (plugins included);
    the JSON schema is the discriminated union of every registered config."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        from entropyctl.controllers.registry import controller_config_union

        union = handler.generate_schema(controller_config_union())
        return core_schema.no_info_plain_validator_function(
            _validate_controller_field,
            json_schema_input_schema=union,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda config: config.model_dump(mode="json"), when_used="always"
            ),
        )


#: The type of a run config's ``controller`` field, e.g.
#: ``controller: ControllerField = Field(default_factory=AERConfig)``.
ControllerField = Annotated[ControllerConfig, _ControllerFieldSchema()]


# --------------------------------------------------------------------------------------------
# YAML and overrides
# --------------------------------------------------------------------------------------------


class _DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first_line: int) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line, self.first_line = key, line, first_line


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader where a key repeated in one mapping is an error (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKeyError(key, line, seen[key])
                seen[key] = line
            except TypeError:  # an unhashable key: SafeLoader reports it below
                pass
        return super().construct_mapping(node, deep=deep)


#: At most this many values once every alias is expanded. A config has hundreds; the 547-byte
#: "billion laughs" file expands to 10^9 (aliases share one object in memory, but writing or
#: validating the config walks every expansion).
MAX_YAML_VALUES = 100_000


def _check_expanded_size(data: Any, path: Path) -> None:
    count, stack = 0, [data]
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            raise ConfigError(
                f"{path}: the YAML expands to more than {MAX_YAML_VALUES:,} values "
                "(aliases of aliases, e.g. a 'billion laughs' file); write the values out instead"
            )
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping (an empty file gives ``{}``).

    Errors name the file and line: ``run.yaml:3: mapping values are not allowed here``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file ({err.strerror or err})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
        _check_expanded_size(data, path)
    except _DuplicateKeyError as err:
        raise ConfigError(
            f"{path}:{err.line}: duplicate key {err.key!r} (first at line {err.first_line})"
        ) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: invalid YAML: {err.problem}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping (got {type(data).__name__})")
    return data


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _parse_scalar(text: str) -> Any:
    # YAML 1.1 reads "1e-3" as a string; users mean a number.
    if _NUMBER.match(text.strip()):
        # int(text), not int(float(text)): 12345678901234567 stays exact.
        return int(text.strip()) if re.match(r"^[+-]?\d+$", text.strip()) else float(text)
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a deep copy of ``data`` with ``"a.b.c=value"`` overrides applied.

    Values are parsed as YAML scalars (``true``, ``0.3``, ``1e-3``, ``[1, 2]``, ``null``);
    missing intermediate mappings are created.
    """
    result: dict[str, Any] = copy.deepcopy(dict(data))
    for override in overrides:
        key, sep, raw = override.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(
                f"override {override!r}: expected KEY=VALUE with a dotted KEY, e.g. controller.tau=0.5"
            )
        node: dict[str, Any] = result
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {override!r}: {where} is not a mapping (it is {child!r})")
            node = child
        node[parts[-1]] = _parse_scalar(raw)
    return result


# --- run configuration ---
# (RunConfig section: owned by the trainer; everything below configures `entropyctl train`.)

# Pure pydantic (no torch/transformers import): the model section of a run config.
from entropyctl.models.config import ModelConfig  # noqa: E402

#: Lightning 2.x's accepted precision strings (lightning.fabric.connector._PRECISION_INPUT_STR and its
#: legacy short forms); a test keeps this list equal to Lightning's.
LIGHTNING_PRECISIONS = (
    "transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true", "bf16-mixed",
    "32-true", "64-true", "64", "32", "16", "bf16",
)  # fmt: skip
#: Lightning's accelerator names (its AcceleratorRegistry, plus "gpu" and "auto").
LIGHTNING_ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps", "tpu")
#: Seeds go to numpy/torch generators, which take 32-bit unsigned seeds.
MAX_SEED = 2**32 - 1
#: Below this sampling temperature nothing trains: log-prob gradients scale with 1/T and a logit gap
#: of 1 nat becomes >= 10 nats, so the runner-up token gets < 5e-5 of the mass, a group's G samples
#: agree, every advantage is 0 (and the entropy bonus is ~0). 0.1 is 6x below the lowest rollout
#: temperature in common RLVR recipes (0.6).
MIN_TRAIN_TEMPERATURE = 0.1
UnitInterval = Annotated[float, Field(ge=0, lt=1)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DataConfig(_Section):
    """Training prompts and the held-out split used by validation."""

    source: Literal["synthetic", "file", "reasoning_gym"] = Field(
        "synthetic",
        description="synthetic: graded arithmetic built in code; file: a JSONL/Parquet math dataset; "
        "reasoning_gym: a reasoning-gym dataset named by `name` (the `tasks` extra).",
    )
    name: str | None = Field(
        None, description="reasoning_gym: the dataset's registered name (chain_sum, ...)."
    )
    levels: list[int] | dict[int, dict[str, Any]] | None = Field(
        None,
        description="synthetic: difficulty levels to draw (None: all); reasoning_gym: level → the dataset "
        "parameters that define it, on top of `options` (None: one level with `options` only).",
    )
    weights: list[float] | None = Field(
        None, description="synthetic, reasoning_gym: mixture weight per level (None: uniform)."
    )
    seed: int = Field(0, description="Seed of the problem streams (training prompts and the held-out split).")
    path: str | None = Field(None, description="file: the training set (.jsonl / .parquet).")
    eval_path: str | None = Field(
        None, description="file: the held-out set; None: hold out eval.n_prompts rows of `path`."
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="file: keyword arguments of entropyctl.data.loaders.load_math_dataset "
        "(field names, templates); reasoning_gym: parameters of the dataset's config for every level, "
        "and `size` (items per level, default 10000, the last tenth held out).",
    )
    template: str | None = Field(
        None, description="Prompt template containing '{prompt}' (None: the problem text as is)."
    )
    chat_template: bool = Field(
        False, description="Wrap the (templated) prompt in the tokenizer's chat template as a user turn."
    )
    system: str | None = Field(None, description="chat_template: an optional system message.")
    overlong_prompts: Literal["error", "drop"] = Field(
        "error",
        description="file: a prompt that does not fit the model's context with the longest response: "
        "error (names file:line and the limit) or drop (leave such rows out, with a warning).",
    )
    strip_prefix: str | None = Field(
        None,
        description="reasoning_gym: text removed from the start of every question that begins with it "
        "(a dataset's fixed instruction; the verifier still sees the whole entry).",
    )

    @model_validator(mode="after")
    def _check_source(self) -> DataConfig:
        if self.source == "file" and not self.path:
            raise ValueError("path: required when data.source is 'file' (a .jsonl or .parquet file)")
        if self.source == "reasoning_gym" and not self.name:
            raise ValueError(
                "name: required when data.source is 'reasoning_gym' (a dataset name, e.g. chain_sum)"
            )
        for field in ("name", "strip_prefix"):
            if getattr(self, field) is not None and self.source != "reasoning_gym":
                raise ValueError(
                    f"{field}: only read when data.source is 'reasoning_gym' (got '{self.source}')"
                )
        if isinstance(self.levels, dict) and self.source != "reasoning_gym":
            raise ValueError(
                f"levels: a mapping of level → parameters is for data.source 'reasoning_gym'; "
                f"data.source '{self.source}' takes a list of levels (got {self.levels})"
            )
        if isinstance(self.levels, list) and self.source == "reasoning_gym":
            raise ValueError(
                "levels: map each level to the dataset parameters that define it, "
                f"e.g. {{1: {{min_terms: 2}}, 2: {{min_terms: 4}}}} (got {self.levels})"
            )
        if self.weights is not None and self.levels is not None and len(self.weights) != len(self.levels):
            raise ValueError(
                f"weights: one weight per level expected ({len(self.levels)} levels, got {len(self.weights)})"
            )
        if self.weights is not None and (any(w < 0 for w in self.weights) or sum(self.weights) <= 0):
            raise ValueError(f"weights: must be ≥ 0 with a positive sum (got {self.weights})")
        return self


class RewardConfig(_Section):
    """The verifier: a registered reward name (``math``, ``exact``) or ``package.module:function``."""

    name: str = Field("math", description="math | exact | reasoning_gym | package.module:function.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the reward factory (e.g. timeout for math)."
    )


class RolloutConfig(_Section):
    """Sampling of the G completions per prompt (the temperature is also the training temperature)."""

    engine: Literal["hf", "vllm"] = Field("hf", description="hf: generate on the policy itself; vllm: vLLM.")
    prompts_per_step: int = Field(32, ge=1, description="P: prompts per step on EACH process.")
    group_size: int = Field(8, ge=2, description="G: completions per prompt.")
    temperature: float = Field(
        1.0,
        ge=MIN_TRAIN_TEMPERATURE,
        description="Sampling temperature T; training log-probs and entropy use softmax(z/T) too.",
    )
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0: off.")
    max_new_tokens: int = Field(8, ge=1, description="Maximum response length L_max in tokens.")
    overlong: Literal["truncate", "mask", "penalty"] = Field(
        "truncate",
        description="Responses hitting max_new_tokens without EOS: truncate = train on them as they are; "
        "mask = exclude them from the loss; penalty = DAPO soft overlong penalty on the reward.",
    )
    overlong_buffer: int = Field(
        4,
        ge=1,
        description="penalty: L_cache, the last tokens before L_max over which the penalty ramps to -1.",
    )
    dynamic_sampling: bool = Field(
        False, description="DAPO: drop groups whose rewards are all equal and refill with new prompts."
    )
    max_refills: int = Field(
        2, ge=0, description="dynamic_sampling: extra prompt batches drawn at most per step."
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Engine options; engine=vllm: entropyctl.rollout.vllm.VLLMConfig.",
    )

    @model_validator(mode="after")
    def _check_buffer(self) -> RolloutConfig:
        if self.overlong == "penalty" and self.overlong_buffer >= self.max_new_tokens:
            raise ValueError(
                f"overlong_buffer: must be < rollout.max_new_tokens = {self.max_new_tokens} "
                f"(got {self.overlong_buffer})"
            )
        return self


class AlgorithmConfig(_Section):
    """GRPO/DAPO loss settings the trainer owns (the controller owns α_i and the clip bounds)."""

    advantage_scale: Literal["group", "none"] = Field(
        "group", description="group: (r − mean)/(std + ε) (GRPO); none: r − mean (Dr.GRPO)."
    )
    ppo_epochs: int = Field(1, ge=1, description="Passes over the step's rollouts.")
    mini_batches: int = Field(1, ge=1, description="Optimizer steps per PPO epoch (rollouts split evenly).")
    kl_coef: float = Field(
        0.0, ge=0, description="β of the KL to a frozen copy of the initial policy (0: off)."
    )
    chunk_size: int | None = Field(
        None, ge=1, description="Tokens per chunk of the fused path; null: chosen from the vocabulary size."
    )
    fused: bool = Field(
        True,
        description="true: the fused path when the LM head is a plain linear map (else full logits); "
        "false: always full logits (the reference path).",
    )


class OptimConfig(_Section):
    """AdamW on every policy parameter."""

    lr: float = Field(1e-4, gt=0, description="Learning rate (constant after warm-up).")
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[UnitInterval, UnitInterval] = Field(
        (0.9, 0.999), description="AdamW (β1, β2), each in [0, 1)."
    )
    eps: float = Field(1e-8, gt=0)
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up, in optimizer steps.")
    grad_clip: float | None = Field(1.0, gt=0, description="Max global gradient norm (None: off).")


class TrainerConfig(_Section):
    """Lightning Trainer settings."""

    steps: int = Field(100, ge=1, description="RLVR steps (each: rollouts → rewards → updates).")
    accelerator: str = Field("cpu", description="Lightning accelerator: cpu, gpu, auto.")
    devices: int = Field(1, ge=1, description="Processes (one per device); > 1 runs DDP.")
    strategy: Literal["auto", "ddp", "ddp_spawn"] = Field(
        "auto", description="auto: single process for devices=1, ddp otherwise."
    )
    precision: str = Field("32-true", description="Lightning precision (32-true, bf16-mixed, ...).")
    threads: int | None = Field(None, ge=1, description="torch threads per process (None: cores / devices).")
    checkpoint_every: int = Field(
        0, ge=0, description="Save a checkpoint every N steps (0: only at the end)."
    )
    save_last: bool = Field(True, description="Save checkpoints/last.ckpt at the end (model + optimizer).")
    stop_grace_s: float | None = Field(
        25.0,
        gt=0,
        description="SIGTERM/SIGINT: seconds the step in progress may still take before it is abandoned "
        "(then no checkpoint of it); within them it finishes and last.ckpt is written. None: no limit.",
    )
    progress_bar: bool = Field(
        True, description="On a terminal, one progress line redrawn in place (step k/N, entropy, α, H*, ...)."
    )
    log_every: int | None = Field(
        None,
        ge=1,
        description="When the output is not a terminal (or progress_bar is off): one progress line every N "
        "steps (None: about 10 lines per run).",
    )
    tensorboard: bool = Field(True, description="Also log to TensorBoard when it is installed.")


class EvalConfig(_Section):
    """pass@k validation with sampling on the held-out split (before and after training)."""

    n_prompts: int = Field(64, ge=0, description="Held-out problems (synthetic: split evenly over levels).")
    n_samples: int = Field(8, ge=1, description="n: samples per problem.")
    ks: list[int] = Field(default_factory=lambda: [1, 4, 8], description="pass@k for these k (each ≤ n).")
    temperature: float | None = Field(None, ge=0, description="None: the rollout temperature; 0: greedy.")
    max_new_tokens: int | None = Field(None, ge=1, description="None: rollout.max_new_tokens.")
    batch_size: int = Field(32, ge=1, description="Problems per generate call.")
    before: bool = Field(True, description="Evaluate before the first step.")
    after: bool = Field(True, description="Evaluate after the last step.")
    every: int = Field(0, ge=0, description="Also evaluate every N steps (0: off).")

    @model_validator(mode="after")
    def _check_ks(self) -> EvalConfig:
        bad = [k for k in self.ks if k < 1 or k > self.n_samples]
        if bad or not self.ks:
            raise ValueError(f"ks: each k must be in [1, eval.n_samples = {self.n_samples}] (got {self.ks})")
        return self


# --- run-config value checks: values that would pass a type check and crash (or do nothing) at run time


def _check_section_values(config: RunConfig) -> list[str]:
    """One ``"<field>: <problem> (got <value>)"`` line per value a run would trip over later."""
    problems: list[str] = []
    t, d, r = config.trainer, config.data, config.reward
    if t.precision not in LIGHTNING_PRECISIONS:
        problems.append(
            f"trainer.precision: must be one of {list(LIGHTNING_PRECISIONS)} (got {t.precision!r})"
        )
    if t.accelerator not in LIGHTNING_ACCELERATORS:
        problems.append(
            f"trainer.accelerator: must be one of {list(LIGHTNING_ACCELERATORS)} (got {t.accelerator!r})"
        )
    if d.template is not None and "{prompt}" not in d.template:
        problems.append(
            f"data.template: must contain '{{prompt}}' where the problem goes (got {d.template!r})"
        )
    if d.source == "synthetic" and isinstance(d.levels, list):
        from entropyctl.data.synthetic import _GENERATORS

        known = sorted(_GENERATORS)
        unknown = [level for level in d.levels if level not in _GENERATORS]
        if not d.levels:
            problems.append(f"data.levels: must name at least one level of {known} (got [])")
        elif unknown:
            problems.append(f"data.levels: unknown level(s) {unknown}; available levels: {known}")
        elif len(set(d.levels)) != len(d.levels):
            problems.append(f"data.levels: each level at most once (got {d.levels})")
    problems += _check_reward(r)
    return problems


def _check_reward(reward: RewardConfig) -> list[str]:
    from entropyctl.rewards.math import check_timeout
    from entropyctl.rewards.registry import available_rewards

    problems = []
    names = available_rewards()
    module, sep, function = reward.name.partition(":")
    if reward.name not in names and not (sep and _DOTTED.fullmatch(module) and _DOTTED.fullmatch(function)):
        problems.append(
            f"reward.name: must be one of {names} or 'package.module:function' (got {reward.name!r})"
        )
    if "timeout" in reward.options:
        try:
            check_timeout(reward.options["timeout"])
        except ValueError as err:
            problems.append(f"reward.options.{err}")
    return problems


_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _reject_bools(data: Any) -> Any:
    """``trainer.steps: true`` is not 1: a YAML boolean where a number is expected is an error
    (pydantic's lax mode would read it as 1)."""
    if not isinstance(data, Mapping):
        return data
    sections: list[tuple[str | None, Any]] = [(None, RunConfig)]
    for name in data:
        field = RunConfig.model_fields.get(str(name))
        if (
            field is not None
            and isinstance(field.annotation, type)
            and issubclass(field.annotation, BaseModel)
        ):
            sections.append((str(name), field.annotation))
    for section, model in sections:
        values = data if section is None else data.get(section)
        if not isinstance(values, Mapping):
            continue
        for key, value in values.items():
            field = model.model_fields.get(str(key))
            if isinstance(value, bool) and field is not None and _is_number(field.annotation):
                where = f"{section}.{key}" if section else str(key)
                raise ValueError(f"{where}: must be a number, not a boolean (got {value!r})")
    return data


def _is_number(annotation: Any) -> bool:
    import typing

    args = typing.get_args(annotation)
    kinds = args if args else (annotation,)
    return any(kind in (int, float) for kind in kinds) and bool not in kinds


def _default_controller() -> ControllerConfig:
    from entropyctl.controllers.aer import AERConfig

    return AERConfig()


class RunConfig(BaseModel):
    """Everything one `entropyctl train` run does; written resolved to ``<run_dir>/config.yaml``."""

    # defer_build: the controller union is resolved through the registry, whose controllers import
    # this module; building the schema at class creation would be a circular import.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, defer_build=True)

    seed: int = Field(
        0,
        ge=0,
        le=MAX_SEED,
        description="Seeds initialisation, prompt sampling and rollouts (per step and rank).",
    )
    output_dir: str = Field("runs", description="Parent of auto-named run directories.")
    run_name: str | None = Field(
        None, description="Run directory name under output_dir (None: time + controller)."
    )
    controller: ControllerField = Field(default_factory=_default_controller)
    model: ModelConfig = Field(default_factory=ModelConfig)  # type: ignore[arg-type]
    data: DataConfig = Field(default_factory=DataConfig)  # type: ignore[arg-type]
    reward: RewardConfig = Field(default_factory=RewardConfig)  # type: ignore[arg-type]
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)  # type: ignore[arg-type]
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)  # type: ignore[arg-type]
    optim: OptimConfig = Field(default_factory=OptimConfig)  # type: ignore[arg-type]
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)  # type: ignore[arg-type]
    eval: EvalConfig = Field(default_factory=EvalConfig)  # type: ignore[arg-type]
    ablation: dict[str, Any] | None = Field(
        None, description="Read by `entropyctl ablate` (arms, seeds); ignored by `entropyctl train`."
    )

    @model_validator(mode="after")
    def _check_values(self) -> RunConfig:
        problems = _check_section_values(self)
        if problems:
            raise ValueError(problems[0])
        return self

    @model_validator(mode="before")
    @classmethod
    def _no_bools_for_numbers(cls, data: Any) -> Any:
        return _reject_bools(data)

    @model_validator(mode="after")
    def _check_batching(self) -> RunConfig:
        sequences = self.rollout.prompts_per_step * self.rollout.group_size
        if self.algorithm.mini_batches > sequences:
            raise ValueError(
                f"algorithm.mini_batches: must be ≤ rollout.prompts_per_step × rollout.group_size = {sequences} "
                f"(got {self.algorithm.mini_batches})"
            )
        return self

    @model_validator(mode="after")
    def _check_task_reward(self) -> RunConfig:
        # reasoning-gym problems are scored by their dataset's own verifier, and only it reads their entries
        if (self.data.source == "reasoning_gym") != (self.reward.name == "reasoning_gym"):
            raise ValueError(
                "reward.name: data.source 'reasoning_gym' is scored by reward 'reasoning_gym' (the dataset's "
                f"own score_answer) and that reward by nothing else (got data.source '{self.data.source}', "
                f"reward.name '{self.reward.name}')"
            )
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def default_config_path() -> Path:
    """The embedded default run config shipped inside the package (identical to configs/default.yaml)."""
    return Path(__file__).resolve().parent / "configs" / "default.yaml"


def parse_run_config(data: Mapping[str, Any], *, source: str | None = None) -> RunConfig:
    """Validate a run config mapping; errors name each field path (``rollout.group_size: ...``)."""
    try:
        return RunConfig.model_validate(dict(data))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "", RunConfig), source=source) from None


def load_run_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> RunConfig:
    """Read a run config (``None``: the embedded default), apply ``key=value`` overrides, validate.

    An override of ``controller.name`` to another controller replaces the file's controller section.
    """
    source = Path(path) if path is not None else default_config_path()
    data = load_yaml(source)
    overrides = list(overrides)
    # `--set controller.name=fixed` switches controller: the file's fields of the previous controller
    # (tau, rho, ...) would be unknown to the new one, so it starts from its own defaults; other
    # `controller.*` overrides still apply on top.
    for override in overrides:
        key, _, value = override.partition("=")
        current = data.get("controller")
        if (
            key.strip() == "controller.name"
            and isinstance(current, Mapping)
            and current.get("name") != value.strip()
        ):
            data["controller"] = {"name": value.strip()}
    data = apply_overrides(data, overrides)
    try:
        return parse_run_config(data, source=str(source))
    except ConfigError as err:
        raise _name_the_overrides(err, overrides, str(source)) from None


#: fields users reach for under another name (other tools' spelling, or an older entropyctl's)
KNOWN_RENAMES = {
    "trainer.max_steps": "trainer.steps",
    "trainer.max_epochs": "trainer.steps",
    "trainer.num_steps": "trainer.steps",
    "optim.learning_rate": "optim.lr",
    "rollout.num_generations": "rollout.group_size",
    "rollout.n": "rollout.group_size",
    "algorithm.beta": "algorithm.kl_coef",
}


def _fields_at(path: str) -> list[str] | None:
    """The field names of the config section holding ``path`` (``trainer.devcies`` → TrainerConfig's)."""
    model: Any = RunConfig
    for part in path.split(".")[:-1]:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None
        model = fields[part].annotation
        if not isinstance(model, type) or not issubclass(model, BaseModel):
            return None
    fields = getattr(model, "model_fields", None)
    return list(fields) if fields else None


def suggest_field(path: str) -> str | None:
    """``trainer.devcies`` → ``trainer.devices``; ``trainer.max_steps`` → ``trainer.steps``; else None."""
    import difflib

    if path in KNOWN_RENAMES:
        return KNOWN_RENAMES[path]
    fields = _fields_at(path)
    if not fields:
        return None
    head, _, last = path.rpartition(".")
    close = difflib.get_close_matches(last, fields, n=1, cutoff=0.6)
    return f"{head}.{close[0]}" if close and head else (close[0] if close else None)


def _same_field(error_path: str, key: str) -> bool:
    # A controller's flat field may be reported inside its part: controller.tau -> controller.anchor.tau.
    if error_path == key:
        return True
    error_parts, key_parts = error_path.split("."), key.split(".")
    return (
        len(error_parts) > len(key_parts) >= 2
        and error_parts[0] == key_parts[0]
        and error_parts[-1] == key_parts[-1]
    )


def _name_the_overrides(err: ConfigError, overrides: Sequence[str], source: str) -> ConfigError:
    """Errors caused by a ``--set`` are reported against it (``--set controller.tau=-1: must be > 0``),
    not against the file the other values came from; an unknown field gets the closest valid one."""
    keys = [(override, override.partition("=")[0].strip()) for override in overrides]
    from_set, from_file = [], []
    for line in err.errors:
        path, sep, message = line.partition(": ")
        hint = ""
        if sep and message.startswith("unknown field"):
            suggestion = suggest_field(path)
            if suggestion is not None:
                hint = f"; did you mean {suggestion}?"
                message = "unknown field"
        override = next((o for o, key in reversed(keys) if sep and _same_field(path, key)), None)
        if override is not None:
            message = re.sub(r" \(got .*\)$", "", message, flags=re.DOTALL)
            from_set.append(f"--set {override}: {message}{hint}")
        else:
            from_file.append(f"{line}{hint}" if hint and sep else line)
    if not from_file:
        return ConfigError(from_set)
    return ConfigError([*from_set, *from_file], source=source)


__all__ += [
    "DataConfig",
    "RewardConfig",
    "RolloutConfig",
    "AlgorithmConfig",
    "OptimConfig",
    "TrainerConfig",
    "EvalConfig",
    "ModelConfig",
    "RunConfig",
    "default_config_path",
    "parse_run_config",
    "load_run_config",
]


#: Controller configs live with their controllers (entropyctl.controllers.*); these names stay
#: importable from here for code written against the first release.
_MOVED = {
    "FixedConfig": "entropyctl.controllers.fixed",
    "ClipHigherConfig": "entropyctl.controllers.clip_higher",
    "TargetConfig": "entropyctl.controllers.target",
    "AERConfig": "entropyctl.controllers.aer",
    **{
        name: "entropyctl.controllers.parts"
        for name in (
            "RelativeUpdate",
            "AdditiveUpdate",
            "SignUpdate",
            "LogUpdate",
            "NoUpdate",
            "InitialAnchor",
            "AbsoluteAnchor",
            "ThresholdAllocation",
            "LinearAllocation",
            "UniformAllocation",
        )
    },
}


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
