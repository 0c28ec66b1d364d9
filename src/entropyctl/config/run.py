"""The run config of ``entropyctl train``: one pydantic section per part of the run, validated as a whole.

The ``controller`` field is a discriminated union over every *registered* controller config, plugins
included (:data:`~entropyctl.controllers.registry.ControllerField`).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from entropyctl.controllers.config import ControllerConfig
from entropyctl.controllers.parts import PART_VARIANTS
from entropyctl.controllers.registry import ControllerField
from entropyctl.models.config import ModelConfig
from entropyctl.ops.sampler_correction import CorrectionMode
from entropyctl.rollout.protocol import GREEDY_BELOW
from entropyctl.validation import (
    ConfigError,
    first_repeated,
    format_validation_error,
    keyword_options,
    unknown_option,
)

__all__ = [
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
    "ABSENT_MEANS",
    "VARIANT_KEYS",
    "drop_other_variant",
    "current_value",
    "switches",
    "fill_absent",
    "parse_written_config",
    "eval_set_names",
]


# --- run configuration ---
# (RunConfig section: owned by the trainer; everything below configures `entropyctl train`.)


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


def _written(info: ValidationInfo) -> bool:
    """Whether the config being validated is a run directory's (:func:`parse_run_config`'s ``written``)."""
    return bool((info.context or {}).get("written"))


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

    @field_validator("levels", mode="before")
    @classmethod
    def _levels_is_a_collection(cls, value: Any) -> Any:
        if isinstance(value, int | float | str) and not isinstance(value, bool):  # pydantic's union errors
            raise ValueError(f"a list of levels, e.g. [{value}] (got {value!r})")
        return value

    seed: int = Field(0, description="Seed of the problem streams (training prompts and the held-out split).")
    path: str | None = Field(None, description="file: the training set (.jsonl / .parquet).")
    eval_path: str | list[str] | None = Field(
        None,
        description="file: the held-out set, or a list of files, each a held-out set of its own with its own "
        "pass@k (named by the file's name, its folders added until the names differ; verl's val_files); "
        "eval.n_prompts rows of each. None: hold out eval.n_prompts rows of `path`.",
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
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="chat_template: keyword arguments the tokenizer's chat template reads, e.g. "
        "{enable_thinking: false} for Qwen3 (TRL's chat_template_kwargs, verl's apply_chat_template_kwargs).",
    )
    order: Literal["random", "epochs"] = Field(
        "random",
        description="file: random = each step draws its prompts at random from the training rows (rows repeat "
        "and some are never drawn); epochs = passes over the rows in a fresh seeded shuffle per epoch, each "
        "row once an epoch, the ranks on disjoint rows (TRL's and verl's shuffled epochs).",
    )
    max_prompt_tokens: int | None = Field(
        None,
        ge=1,
        description="file: the most tokens a prompt may have (as the model sees it, templates included); "
        "longer ones are handled as overlong_prompts says (verl's max_prompt_length with "
        "filter_overlong_prompts). None: only the model's context limits them.",
    )
    overlong_prompts: Literal["error", "drop"] = Field(
        "error",
        description="file: a prompt over data.max_prompt_tokens, or that does not fit the model's context with "
        "the longest response: error (names file:line and the limit) or drop (leave such rows out, with a "
        "warning).",
    )
    strip_prefix: str | None = Field(
        None,
        description="reasoning_gym: text removed from the start of every question that begins with it "
        "(a dataset's fixed instruction; the verifier still sees the whole entry).",
    )

    @model_validator(mode="after")
    def _check_source(self, info: ValidationInfo) -> DataConfig:
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
        reserved = sorted(
            set(self.chat_template_kwargs) & {"tokenize", "add_generation_prompt", "conversation"}
        )
        if reserved:
            raise ValueError(
                f"chat_template_kwargs: {', '.join(reserved)} is set by the trainer; leave it out"
            )
        fresh = not _written(info)  # settings that did nothing: refused in a new config, not in a run's
        for field in ("system", "chat_template_kwargs"):
            if getattr(self, field) and not self.chat_template and fresh:
                raise ValueError(f"{field}: only read when data.chat_template is true")
        if self.order != "random" and self.source != "file":
            raise ValueError(f"order: epochs are passes over a file's rows; data.source is '{self.source}'")
        for field in ("path", "eval_path", "max_prompt_tokens"):
            if (
                getattr(self, field) is not None
                and self.source != "file"
                and (fresh or field == "max_prompt_tokens")
            ):
                raise ValueError(
                    f"{field}: only read when data.source is 'file' (got '{self.source}'); set data.source: "
                    "file to train on it"
                )
        if isinstance(self.eval_path, list):
            _check_eval_files(self.eval_path)
        elif self.eval_path and "," in self.eval_path and fresh and not Path(self.eval_path).exists():
            raise ValueError(
                f"eval_path: no file {self.eval_path!r}; several held-out files are a list: "
                f"data.eval_path=[{self.eval_path}]"
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

    def eval_files(self) -> list[str]:
        """The held-out files of ``eval_path`` (one, several, or none)."""
        if self.eval_path is None:
            return []
        return [self.eval_path] if isinstance(self.eval_path, str) else list(self.eval_path)

    def held_out_source(self) -> list[str]:
        """The files a file run's held-out problems are read from: ``eval_path``'s, else ``data.path`` (its
        split); ``data.path`` is not read for them when there is an ``eval_path``."""
        return self.eval_files() or ([self.path] if self.path else [])


def _check_eval_files(paths: list[str]) -> None:
    if not paths:
        raise ValueError("eval_path: an empty list names no held-out set; leave eval_path out instead")
    # the same file however it is written (``a.jsonl``, ``./a.jsonl``, ``d/../a.jsonl``)
    repeated = first_repeated([os.path.normpath(os.path.expanduser(p)) for p in paths])
    if repeated is not None:
        raise ValueError(f"eval_path: {repeated!r} is listed twice")


def eval_set_names(paths: Sequence[str]) -> list[str]:
    """Each held-out file's set name: its file name without the suffix, with as many of its folders in front
    as make the names differ (``gsm8k/test.jsonl``, ``math/test.jsonl`` → ``gsm8k/test``, ``math/test``)."""
    parts = [PurePath(p).with_suffix("").parts for p in paths]
    for depth in range(1, max((len(x) for x in parts), default=1) + 1):
        names = ["/".join(x[-depth:]) for x in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


class ShapingReward(_Section):
    """A reward added, weighted, to the verifier's in the advantages only (a format reward, a length bonus)."""

    name: str = Field(
        description="math | exact | package.module:function (called as fn(completion, answer))."
    )
    weight: float = Field(1.0, description="w_k: the shaped reward is the verifier's + Σ_k w_k · score_k.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the reward factory."
    )
    label: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.\-]+$",
        description="Its metrics.csv column, shaping/<label> (None: the function's or reward's name).",
    )


class RewardConfig(_Section):
    """The verifier: a registered reward name (``math``, ``exact``) or ``package.module:function``."""

    name: str = Field("math", description="math | exact | reasoning_gym | package.module:function.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the reward factory (e.g. timeout for math)."
    )
    shaping: list[ShapingReward] = Field(
        default_factory=list,
        description="Rewards added to the verifier's, weighted, for the advantages (TRL's reward_funcs with "
        "reward_weights). The verifier alone decides a solve (score ≥ 1: accuracy, the controller's difficulty, "
        "pass@k); each one's mean is logged as shaping/<label>.",
    )

    @field_validator("shaping", mode="before")
    @classmethod
    def _named_shaping(cls, value: Any) -> Any:
        """A bare name in the list (TRL's ``reward_funcs`` habit: ``[pkg.mod:bonus]``) is that reward at
        weight 1."""
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value

    def shaping_labels(self) -> list[str]:
        """Each shaping reward's column label: its ``label``, else its function's or reward's name; a repeated
        label gets _2, _3, ..."""
        labels: list[str] = []
        for item in self.shaping:
            base = item.label or item.name.rpartition(":")[2]
            label, k = base, 1
            while label in labels:
                k += 1
                label = f"{base}_{k}"
            labels.append(label)
        return labels


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
    overlong_penalty_factor: float = Field(
        1.0,
        gt=0,
        description="penalty: the penalty's size at L_max, ramping from 0 (DAPO's 1; verl's "
        "overlong_buffer.penalty_factor, OpenRLHF's overlong_penalty_factor).",
    )
    dynamic_sampling: bool = Field(
        False,
        description="DAPO: drop groups whose shaped rewards (the verifier's, reward.shaping, the overlong "
        "penalty) are all equal and refill with new prompts.",
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


class RolloutCorrection(_Section):
    """Importance weights for the mismatch between the rollout engine's sampling distribution and the
    trainer's (entropyctl.ops.sampler_correction; TRL's vllm_importance_sampling_*)."""

    mode: CorrectionMode = Field(
        "token_truncate",
        description="token_truncate: each token's policy-gradient term × min(r, clip_max) with r = "
        "π_train/π_sampler of the token (TIS); token_mask: × r inside [clip_min, clip_max], else 0 (MIS); "
        "sequence_*: the same with the response's ratio (the product over its tokens); monitor: the mismatch "
        "is measured and logged, nothing is corrected.",
    )
    clip_max: float | None = Field(
        2.0, gt=0, description="Upper bound on r (truncate: clipped to it; mask: above it, weight 0)."
    )
    clip_min: float | None = Field(
        None,
        ge=0,
        description="Lower bound on r (truncate: raised to it; mask: below it, weight 0). None: none.",
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> RolloutCorrection:
        if self.clip_min is not None and self.clip_max is not None and self.clip_min > self.clip_max:
            raise ValueError(f"clip_min: must be ≤ clip_max = {self.clip_max} (got {self.clip_min})")
        if self.mode != "monitor" and self.clip_max is None:
            # an unbounded ratio has no bounded variance, and a response's can overflow (a broken sync)
            raise ValueError(f"clip_max: {self.mode} needs an upper bound")
        return self


class AlgorithmConfig(_Section):
    """GRPO/DAPO loss settings the trainer owns (the controller owns α_i and the clip bounds)."""

    advantage_scale: Literal["group", "batch", "none"] = Field(
        "group",
        description="group: (r − b)/(std of the group + ε) (GRPO); batch: (r − b)/(std of every reward of the "
        "step's global batch + ε) (TRL's scale_rewards='batch'); none: r − b (Dr.GRPO, RLOO).",
    )
    advantage_baseline: Literal["mean", "leave-one-out"] = Field(
        "mean",
        description="b: mean = the group's mean reward (GRPO); leave-one-out = the mean of the group's other "
        "G − 1 rewards (RLOO, with advantage_scale: none).",
    )
    loss_agg: Literal[
        "token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm", "seq-mean-token-sum"
    ] = Field(
        "token-mean",
        description="How the loss's per-token terms are averaged (verl's loss_agg_mode): token-mean = over every "
        "response token of the optimizer step's global batch (DAPO; TRL's 'dapo'); seq-mean-token-mean = "
        "each response's token mean, averaged over responses (the original GRPO; TRL's 'grpo'); "
        "seq-mean-token-sum-norm = each response's token sum / rollout.max_new_tokens, averaged over "
        "responses (Dr.GRPO; TRL's 'dr_grpo'); seq-mean-token-sum = each response's token sum, averaged over "
        "responses (verl's; a loss max_new_tokens times sum-norm's). The entropy term is aggregated as the "
        "policy term is; the controller's entropy reading stays a token mean.",
    )
    importance_level: Literal["token", "sequence"] = Field(
        "token",
        description="The PPO ratio: token = each token's own (GRPO, DAPO); sequence = its response's, the "
        "geometric mean of the tokens' ratios, for every token of it (GSPO; TRL's importance_sampling_level; "
        "pair it with loss_agg seq-mean-token-mean). Acts only with more than one update per batch (at "
        "ratio 1 both give the same gradient); the fused path passes the LM head twice whenever it is on.",
    )
    ppo_epochs: int = Field(1, ge=1, description="Passes over the step's rollouts.")
    mini_batches: int = Field(1, ge=1, description="Optimizer steps per PPO epoch (rollouts split evenly).")
    micro_batch_size: int | None = Field(
        None,
        ge=1,
        description="Responses per forward/backward on each process: a mini-batch is run in micro-batches of "
        "this many, their gradients summed before its one optimizer step (TRL's per_device_train_batch_size "
        "with gradient_accumulation_steps, verl's ppo_micro_batch_size_per_gpu). Bounds the activations' memory; "
        "the update is the same up to float rounding. null: the whole mini-batch at once.",
    )
    micro_batch_tokens: int | None = Field(
        None,
        ge=1,
        description="At most this many padded tokens (rows × (longest prompt + longest response) of the "
        "micro-batch) per forward/backward on each process: a mini-batch's rows, longest first, are cut "
        "into micro-batches as long as they fit (a row longer than the budget alone), so short responses "
        "share a forward and long ones do not (verl's use_dynamic_bsz with ppo_max_token_len_per_gpu). "
        "With micro_batch_size both bounds hold. The update is the same up to float rounding.",
    )
    kl_coef: float = Field(
        0.0,
        ge=0,
        description="β of the KL to a frozen copy of the initial policy (0: off; verl's kl_loss_coef, TRL's "
        "beta), a loss term per token as verl's use_kl_loss and TRL do (not a reward penalty).",
    )
    kl_reward_coef: float = Field(
        0.0,
        ge=0,
        description="β_r of a KL penalty in the reward (0: off; verl's use_kl_in_reward with kl_ctrl.kl_coef; "
        "the nearest to OpenRLHF's init_kl_coef without use_kl_loss, which adds it per token after the group "
        "normalisation): each response's reward, before its group's advantage, less β_r · Σ_t (log π_old − "
        "log π_ref) over its tokens (k1), the sum verl's GRPO advantage takes of its per-token penalties. Not "
        "in the accuracy the controller reads, dynamic sampling's all-equal test or skip_no_signal's. "
        "Independent of kl_coef (the loss term).",
    )
    kl_reward_target: float | None = Field(
        None,
        gt=0,
        description="An adaptive β_r (Ziegler et al. 2019; verl's kl_ctrl.type: adaptive with kl_ctrl.target_kl, "
        "OpenRLHF's kl_target): after each step β_r ← β_r · (1 + clip(KL / target − 1, −0.2, 0.2) · N / "
        "kl_reward_horizon), KL the step's mean over its responses of each response's per-token mean k1 "
        "(metrics column kl_reward_token_mean), N the step's responses on all processes; kl_reward_coef is "
        "β_r's start. null: β_r stays kl_reward_coef (verl's kl_ctrl.type: fixed).",
    )
    kl_reward_horizon: int = Field(
        10000,
        ge=1,
        description="The adaptive β_r's horizon (kl_reward_target; verl's kl_ctrl.horizon, OpenRLHF's "
        "kl_horizon): β_r moves by at most 20 % · N / horizon a step, N the step's responses. Read only "
        "with kl_reward_target.",
    )
    ref_sync_steps: int | None = Field(
        None,
        ge=1,
        description="Every this many RL steps, after the step's update, the KL reference moves toward the "
        "policy: π_ref ← (1 − m)·π_ref + m·π, m = ref_sync_mix (TRL's sync_ref_model with "
        "ref_model_sync_steps, TR-DPO's soft update; m = 1 is the hard reference reset of prolonged RL). "
        "Needs a KL (kl_coef or kl_reward_coef above 0); not with LoRA (its reference is the base model) "
        "or FSDP. The moved reference is saved in the checkpoints. null: the reference stays the initial "
        "policy.",
    )
    ref_sync_mix: float = Field(
        0.6,
        gt=0,
        le=1,
        description="m of ref_sync_steps: the policy's share in the new reference (TRL's "
        "ref_model_mixup_alpha, 0.6; 1: a hard reset to the policy).",
    )
    kl_estimator: Literal["k3", "low_var_kl", "k1", "k2", "abs"] = Field(
        "k3",
        description="The per-token KL estimate, r = ref − logp: k3 = exp(r) − r − 1, unbounded (TRL's); "
        "low_var_kl, the same with r clamped to ±20 and the result to at most 10, no gradient where a clamp "
        "binds (verl's kl_loss_type: low_var_kl, and its k3), so one sampled token deep in the reference's "
        "tail cannot outweigh the batch; k1 = −r, k2 = r²/2, abs = |r| (verl's kl, mse and abs).",
    )
    dual_clip: float | None = Field(
        None,
        gt=1,
        description="Dual-clip PPO: under a negative advantage a token's term is bounded below at c·A, so a "
        "ratio far above 1 (> c) stops pulling (verl's clip_ratio_c, on at 3 there by default; OpenRLHF's "
        "dual_clip). Acts only with more than one update per batch. null: off.",
    )
    chunk_size: int | None = Field(
        None, ge=1, description="Tokens per chunk of the fused path; null: chosen from the vocabulary size."
    )
    fused: bool = Field(
        True,
        description="true: the fused path when the LM head is a plain linear map (else full logits); "
        "false: always full logits (the reference path).",
    )
    rollout_correction: RolloutCorrection | None = Field(
        None,
        description="Correct the policy-gradient term for the rollout engine sampling from a slightly different "
        "distribution than the trainer computes (vLLM kernels, bf16): importance weights from the engine's "
        "log-probs (mode, clip_max, clip_min), and the mismatch logged (sampler_kl, sampler_logp_diff, "
        "is_weight_mean, is_bounded_frac). None: off (the engine's log-probs are not asked for).",
    )
    skip_no_signal: bool = Field(
        False,
        description="true: a step in which no group on any process carries a policy-gradient signal (every "
        "group's rewards equal, so every advantage is 0) changes no weight; its entropy is still read and "
        "observed. Under Adam a loss made of the entropy bonus alone moves the policy at the full step size "
        "whatever α is (docs/training.md, 'Steps with no signal'); false: such a step is taken.",
    )

    @property
    def updates_per_batch(self) -> int:
        """Optimizer steps on each step's rollouts; with one, the update is on-policy (ratio 1, nothing clipped)."""
        return self.ppo_epochs * self.mini_batches


class OptimConfig(_Section):
    """AdamW on every policy parameter."""

    lr: float = Field(1e-4, gt=0, description="Peak learning rate (after warm-up; see schedule).")
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[UnitInterval, UnitInterval] = Field(
        (0.9, 0.999), description="AdamW (β1, β2), each in [0, 1)."
    )
    eps: float = Field(1e-8, gt=0)
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up, in optimizer steps.")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant",
        description="The lr after warm-up: constant; or a linear / cosine decay to min_lr_ratio·lr at the "
        "run's last optimizer step (trainer.steps × optimizer steps per step).",
    )
    min_lr_ratio: float = Field(
        0.0, ge=0, le=1, description="linear / cosine: the last step's lr as a fraction of lr."
    )
    grad_clip: float | None = Field(1.0, gt=0, description="Max global gradient norm (None: off).")


class WandbSettings(_Section):
    """Weights & Biases logging of every metrics.csv column (Lightning's WandbLogger; the wandb extra)."""

    project: str = Field("entropyctl", min_length=1, description="W&B project.")
    name: str | None = Field(None, description="W&B run name (None: the run directory's name).")
    entity: str | None = Field(None, description="W&B entity (team or user; None: your default).")
    group: str | None = Field(None, description="W&B group (e.g. one per ablation).")
    tags: list[str] = Field(default_factory=list, description="W&B tags.")
    mode: Literal["online", "offline"] = Field(
        "online",
        description="online: stream to W&B; offline: write under <run dir>/wandb (`wandb sync` later).",
    )


class TrainerConfig(_Section):
    """Lightning Trainer settings."""

    steps: int = Field(100, ge=1, description="RLVR steps (each: rollouts → rewards → updates).")
    accelerator: str = Field(
        "cpu",
        description="Lightning accelerator: cpu, gpu, auto (Apple's MPS is refused: the trainer's statistics "
        "are float64).",
    )
    devices: int = Field(1, ge=1, description="Processes (one per device); > 1 runs DDP.")
    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        "auto",
        description="auto: single process for devices=1, ddp otherwise. fsdp: the policy sharded over the "
        "devices (FSDP2 fully_shard; CPU/gloo or CUDA; rollout.engine=hf, no dynamic sampling). Lightning's "
        "ddp_spawn is refused: ddp starts every process from the command line instead.",
    )
    precision: str = Field("32-true", description="Lightning precision (32-true, bf16-mixed, ...).")
    threads: int | None = Field(None, ge=1, description="torch threads per process (None: cores / devices).")
    checkpoint_every: int = Field(
        0, ge=0, description="Save a checkpoint every N steps (0: only at the end)."
    )
    keep_checkpoints: int | None = Field(
        None,
        ge=1,
        description="Keep the N most recent step-NNNNNN.ckpt (the one just written counts; last.ckpt and "
        "any of a later step are never removed): older ones are deleted after each save. None: keep all.",
    )
    save_last: bool = Field(
        True,
        description="Save checkpoints/last.ckpt at the end (model + optimizer); each periodic checkpoint "
        "(checkpoint_every) refreshes it whatever this says.",
    )
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
    completions_every: int = Field(
        0,
        ge=0,
        description="Write step 1's and every N-th step's rollouts to <run dir>/completions.jsonl (prompt, "
        "completion, answer, rewards, advantage, length; rank 0's share under DDP). 0: off.",
    )
    wandb: WandbSettings | None = Field(
        None,
        description="Also log to Weights & Biases (project, name, entity, group, tags, mode; needs wandb: "
        "pip install 'entropyctl[wandb]'). A resumed run continues the same W&B run. None: off.",
    )

    @field_validator("strategy", mode="before")
    @classmethod
    def _no_spawn(cls, value: Any) -> Any:
        if value == "ddp_spawn":
            # Lightning's spawn launcher pickles the module into fresh processes and hands back only its
            # weights: the module holds the reward's worker and the run's heartbeat (threads, not picklable),
            # and the controller's state and the step's records would stay in the children
            raise ValueError(
                "ddp_spawn is not supported (it pickles the module into new processes and returns only its "
                "weights); use ddp, which starts each process from the same command line"
            )
        return value


class EvalConfig(_Section):
    """pass@k validation with sampling on the held-out split (before and after training)."""

    n_prompts: int = Field(64, ge=0, description="Held-out problems (synthetic: split evenly over levels).")
    n_samples: int = Field(8, ge=1, description="n: samples per problem.")
    ks: list[int] = Field(default_factory=lambda: [1, 4, 8], description="pass@k for these k (each ≤ n).")
    temperature: float | None = Field(None, ge=0, description="None: the rollout temperature; 0: greedy.")
    top_p: float | None = Field(
        None, gt=0, le=1, description="None: rollout.top_p (verl's val_kwargs.top_p, apart from training's)."
    )
    top_k: int | None = Field(None, ge=0, description="None: rollout.top_k; 0: off.")
    max_new_tokens: int | None = Field(None, ge=1, description="None: rollout.max_new_tokens.")
    batch_size: int = Field(32, ge=1, description="Problems per generate call.")
    before: bool = Field(True, description="Evaluate before the first step.")
    after: bool = Field(True, description="Evaluate after the last step.")
    every: int = Field(0, ge=0, description="Also evaluate every N steps (0: off).")

    @model_validator(mode="after")
    def _check_ks(self, info: ValidationInfo) -> EvalConfig:
        if not self.ks:
            raise ValueError("ks: at least one k, e.g. [1] (got [])")
        bad = [k for k in self.ks if k < 1 or k > self.n_samples]
        if bad:
            raise ValueError(f"ks: each k must be in [1, eval.n_samples = {self.n_samples}] (got {self.ks})")
        if self.temperature is not None and 0 < self.temperature < GREEDY_BELOW:
            raise ValueError(
                f"temperature: {self.temperature} is greedy decoding in vLLM and sampling in the HF engine; "
                "write 0 for greedy"
            )
        if self.temperature == 0 and self.n_samples > 1 and not _written(info):
            raise ValueError(
                f"n_samples: greedy decoding (eval.temperature 0) gives {self.n_samples} equal samples, so every "
                "pass@k would be pass@1; set eval.n_samples=1 and eval.ks=[1], or a temperature above 0"
            )
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
    if config.algorithm.skip_no_signal and t.precision in ("16-mixed", "16"):
        problems.append(
            "algorithm.skip_no_signal: cannot run with fp16 loss scaling (trainer.precision 16-mixed): a skipped "
            "step has no backward, and the gradient scaler cannot step without one; use bf16-mixed, "
            f"bf16-true or 32-true (got trainer.precision={t.precision!r})"
        )
    if config.model.lora is not None and t.strategy == "fsdp":
        problems.append(
            "model.lora: not built for trainer.strategy fsdp (sharding frozen base weights beside trainable "
            "adapters is untested here); use the default strategy (DDP with several devices)"
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
        from entropyctl.data.synthetic import GENERATORS

        known = sorted(GENERATORS)
        unknown = [level for level in d.levels if level not in GENERATORS]
        if not d.levels:
            problems.append(f"data.levels: must name at least one level of {known} (got [])")
        elif unknown:
            problems.append(f"data.levels: unknown level(s) {unknown}; available levels: {known}")
        elif len(set(d.levels)) != len(d.levels):
            problems.append(f"data.levels: each level at most once (got {d.levels})")
    m = config.model
    if d.source == "reasoning_gym" and m.kind == "tiny" and (m.pretrain.levels or m.pretrain.weights):
        field = "levels" if m.pretrain.levels else "weights"
        problems.append(
            f"model.pretrain.{field}: chooses synthetic levels; with data.source reasoning_gym the tiny model's "
            "warm start draws from data.levels and data.weights (remove model.pretrain.levels and weights)"
        )
    problems += _check_kl_reward(config)
    problems += _check_ref_sync(config)
    problems += _check_data_options(d)
    problems += _check_reward(r)
    problems += _check_engine_options(config.rollout)
    return problems


def _check_kl_reward(config: RunConfig) -> list[str]:
    """The adaptive KL in the reward's settings that could not work: a start of 0 (β_r · anything stays
    0) and a horizon so short that one step's factor 1 − 0.2 · N / horizon could reach 0 (N the step's
    responses on one process here; the trainer checks the whole world's at its start)."""
    a, rollout = config.algorithm, config.rollout
    if a.kl_reward_target is None:
        return []
    if a.kl_reward_coef == 0:
        return [
            "algorithm.kl_reward_target: the adaptive β_r starts at algorithm.kl_reward_coef and scales it, so "
            "from 0 it stays 0; set algorithm.kl_reward_coef above 0 (verl's kl_ctrl.kl_coef, e.g. 0.001)"
        ]
    problem = kl_horizon_problem(a, rollout.prompts_per_step * rollout.group_size, "a process")
    return [] if problem is None else [problem]


def kl_horizon_problem(algorithm: AlgorithmConfig, responses: int, counted: str) -> str | None:
    """Why ``algorithm.kl_reward_horizon`` cannot work with ``responses`` a step (``counted`` says over
    what: one process at load, all of them at the train start): one step's factor 1 − 0.2 · responses /
    horizon would reach 0; None when it can."""
    if algorithm.kl_reward_target is None or responses < 5 * algorithm.kl_reward_horizon:
        return None
    return (
        f"algorithm.kl_reward_horizon: must exceed the step's responses / 5 ({responses} responses on "
        f"{counted}: a step's factor 1 − 0.2 · responses / horizon would reach 0 or below; got "
        f"{algorithm.kl_reward_horizon})"
    )


def _check_ref_sync(config: RunConfig) -> list[str]:
    """``algorithm.ref_sync_steps`` where it could not act: no KL (no reference), a LoRA run (the
    reference is the base model, the policy with its adapters off) or FSDP (the reference is a full
    copy beside the sharded policy)."""
    a = config.algorithm
    if a.ref_sync_steps is None:
        return []
    if a.kl_coef == 0 and a.kl_reward_coef == 0:
        return [
            "algorithm.ref_sync_steps: moves the KL reference, and there is none: set algorithm.kl_coef or "
            "algorithm.kl_reward_coef above 0, or drop ref_sync_steps"
        ]
    if config.model.lora is not None:
        return [
            "algorithm.ref_sync_steps: not with model.lora (the reference is the base model, the policy "
            "with its adapters off: there is no copy to move)"
        ]
    if config.trainer.strategy == "fsdp":
        return ["algorithm.ref_sync_steps: not built for trainer.strategy fsdp (the policy is sharded there)"]
    return []


def _check_engine_options(rollout: RolloutConfig) -> list[str]:
    """``rollout.options`` of the vllm engine checked as its :class:`~entropyctl.rollout.vllm.VLLMConfig`
    reads them (not when the engine starts, minutes into a run); vllm itself is not imported."""
    if rollout.engine != "vllm":
        return []
    from pydantic import ValidationError as OptionsError

    from entropyctl.rollout.vllm import VLLMConfig

    try:
        VLLMConfig.model_validate(dict(rollout.options))
    except OptionsError as err:
        accepted = list(VLLMConfig.model_fields)
        return [
            f"rollout.options.{'.'.join(map(str, e['loc']))}: "
            + (
                unknown_option(str(e["loc"][0]), accepted, "the vllm engine")
                if e["type"] == "extra_forbidden"
                else f"{e['msg']} (got {e.get('input')!r})"
            )
            for e in err.errors()
        ]
    return []


def _check_reward(reward: RewardConfig) -> list[str]:
    problems = _check_one_reward("reward", reward.name, reward.options)
    for k, item in enumerate(reward.shaping):
        if item.name == "reasoning_gym":
            problems.append(
                f"reward.shaping[{k}].name: reasoning_gym scores its own dataset only (it is a verifier)"
            )
            continue
        problems += _check_one_reward(f"reward.shaping[{k}]", item.name, item.options)
    return problems


def _check_one_reward(where: str, name: str, options: dict[str, Any]) -> list[str]:
    from entropyctl.rewards.registry import available_rewards, check_reward

    names = available_rewards()
    module, sep, function = name.partition(":")
    if name not in names and not (sep and _DOTTED.fullmatch(module) and _DOTTED.fullmatch(function)):
        return [f"{where}.name: must be one of {names} or 'package.module:function' (got {name!r})"]
    # the registry knows each reward's options; a package.module:function is imported there (not a built-in)
    return [f"{where}.{field}: {problem}" for field, problem in check_reward(name, options)]


def _check_data_options(data: DataConfig) -> list[str]:
    """``data.options`` are what the source reads: the keyword arguments of load_math_dataset (file), the
    dataset's own config (reasoning_gym, checked when the task is built), nothing (synthetic)."""
    if data.source == "synthetic" and data.options:
        return [
            "data.options: not read when data.source is 'synthetic' (they are the file loader's options, or a "
            f"reasoning-gym dataset's; got {data.options!r})"
        ]
    if data.source != "file":
        return []
    from entropyctl.data.loaders import load_math_dataset

    accepted = keyword_options(load_math_dataset, skip=1) or []  # the first parameter is the file's path
    # keep_columns is the trainer's to set (whether the reward takes the row's columns), not an option
    accepted = [a for a in accepted if a != "keep_columns"]
    return [
        f"data.options.{key}: {unknown_option(str(key), accepted, 'the file loader')}"
        for key in data.options
        if key not in accepted
    ]


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
    def _check_importance_level(self) -> RunConfig:
        if self.algorithm.importance_level != "sequence":
            return self
        from entropyctl.controllers.registry import create_controller

        # per-token actions and weights act on each token's own ratio; a response's shared ratio passes a
        # gradient to every token of it, a masked or down-weighted one too
        if create_controller(self.controller).acts_per_token():
            raise ValueError(
                "algorithm.importance_level: sequence (GSPO) shares one ratio over each response; controller "
                f"{self.controller.name!r} acts on each token's own ratio. Use importance_level: token with it"
            )
        rc = self.algorithm.rollout_correction
        if rc is not None and rc.mode.startswith("token_"):
            raise ValueError(
                f"algorithm.rollout_correction: mode {rc.mode} weighs each token, which a response's shared ratio "
                "(importance_level: sequence) does not separate; use sequence_truncate or sequence_mask"
            )
        return self

    @model_validator(mode="after")
    def _check_rollout_correction(self) -> RunConfig:
        rc, r = self.algorithm.rollout_correction, self.rollout
        if rc is not None and rc.mode != "monitor" and (r.top_p < 1 or r.top_k > 0):
            # vLLM's log-probs are the truncated distribution's, the HF engine's and the trainer's the full
            # one's: the weights would mean one thing on one engine and another (the kept mass) on the other
            raise ValueError(
                f"algorithm.rollout_correction: mode {rc.mode} needs untruncated sampling (rollout.top_p 1 and "
                f"top_k 0; got top_p {r.top_p}, top_k {r.top_k}): with a truncated distribution the ratio "
                "measures the truncation, not the engine's mismatch. mode: monitor still logs it"
            )
        return self

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

    def eval_sampling(self) -> dict[str, Any]:
        """How the held-out evaluations sample: ``eval``'s temperature, top_p, top_k and max_new_tokens,
        each None one the rollout's (the trainer and ``entropyctl evaluate`` alike)."""
        e, r = self.eval, self.rollout
        return {
            "temperature": r.temperature if e.temperature is None else e.temperature,
            "top_p": r.top_p if e.top_p is None else e.top_p,
            "top_k": r.top_k if e.top_k is None else e.top_k,
            "max_new_tokens": r.max_new_tokens if e.max_new_tokens is None else e.max_new_tokens,
        }

    def inert_settings(self) -> list[str]:
        """Settings that are valid but cannot act in this config, one line each (the trainer prints them
        at the start of a run; nothing is changed)."""
        lines = []
        bounds = (getattr(self.controller, "clip_low", None), getattr(self.controller, "clip_high", None))
        if self.algorithm.updates_per_batch == 1 and None not in bounds:
            if self.controller.name == "clip_higher" or bounds != (0.2, 0.2):
                lines.append(
                    f"controller clip bounds (clip_low {bounds[0]}, clip_high {bounds[1]}) have no effect: with "
                    "one update per batch (algorithm.ppo_epochs 1, algorithm.mini_batches 1) the policy ratio is "
                    "1 at that update and no token is clipped; set algorithm.ppo_epochs or mini_batches to 2 or more"
                )
        if self.algorithm.updates_per_batch == 1 and self.algorithm.dual_clip is not None:
            lines.append(
                f"algorithm.dual_clip {self.algorithm.dual_clip} has no effect: with one update per batch the "
                "policy ratio is 1 at that update, never above the bound; set algorithm.ppo_epochs or "
                "mini_batches to 2 or more"
            )
        if self.ablation:
            lines.append(
                "the ablation: section (arms, seeds) is read by `entropyctl ablate`; `entropyctl train` runs the "
                "base config alone, with the controller it names"
            )
        for name in ("overlong_buffer", "overlong_penalty_factor"):
            value = getattr(self.rollout, name)
            if self.rollout.overlong != "penalty" and value != RolloutConfig.model_fields[name].default:
                lines.append(
                    f"rollout.{name} {value} has no effect: it shapes DAPO's overlong penalty, which is off "
                    f"(rollout.overlong is {self.rollout.overlong!r}; set it to penalty)"
                )
        if self.rollout.engine == "hf" and self.rollout.options:
            lines.append(
                f"rollout.options ({', '.join(sorted(self.rollout.options))}) configure the vllm engine and "
                "are not read with rollout.engine=hf"
            )
        return lines

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def default_config_path() -> Path:
    """The embedded default run config shipped inside the package (identical to configs/default.yaml)."""
    return Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def parse_run_config(
    data: Mapping[str, Any], *, source: str | None = None, written: bool = False
) -> RunConfig:
    """Validate a run config mapping; errors name each field path (``rollout.group_size: ...``). ``written``:
    a run directory's config (what ran): the checks added for settings that did nothing
    (a data file on another source, a system message without the chat template, a greedy evaluation of
    several samples) do not refuse it, so such a run still resumes and evaluates."""
    try:
        return RunConfig.model_validate(dict(data), context={"written": written})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "", RunConfig, PART_VARIANTS), source=source) from None


#: What a *written* run config — a run directory's ``config.yaml``, the run fingerprint in a
#: checkpoint, both written with every field — means by leaving a field out. A field is missing
#: there only when the config was written before the field existed, so the run ran as this value
#: does; today's default may differ. Every field added since the first release is listed
#: (tests/test_written_config.py checks every committed run config against this table). When a
#: default changes, its entry keeps the value the older runs used, and they still read back as what
#: they ran. ``controller.update.*`` entries apply to the ``relative`` rule, ``controller.anchor.*``
#: to the ``initial`` anchor (the first release's flat form is read by ``migrate_flat``).
ABSENT_MEANS: dict[str, Any] = {
    "controller.update.hold_on_approach": False,
    "controller.update.lower_ratio": 1.0,
    "controller.update.release_band": 0.0,
    "controller.update.climb_boost": 0.0,
    "controller.update.climb_from": 0.0,
    "controller.update.climb_after": 0,
    "controller.update.rearm_at_target": False,
    "controller.update.rearm_alpha": None,
    "controller.update.conditional": False,
    "controller.update.linear": 0.0,
    "controller.update.linear_on": "both",
    "controller.update.apply": "always",
    "controller.anchor.steps": 1,
    "algorithm.skip_no_signal": False,
    "algorithm.loss_agg": "token-mean",
    "algorithm.rollout_correction": None,
    "algorithm.advantage_baseline": "mean",
    "reward.shaping": [],
    "algorithm.importance_level": "token",
    "algorithm.micro_batch_size": None,
    "algorithm.micro_batch_tokens": None,
    "algorithm.dual_clip": None,
    "algorithm.kl_estimator": "k3",
    "algorithm.kl_reward_coef": 0.0,
    "algorithm.kl_reward_target": None,
    "algorithm.kl_reward_horizon": 10000,
    "algorithm.ref_sync_steps": None,
    "algorithm.ref_sync_mix": 0.6,
    "eval.top_p": None,
    "rollout.overlong_penalty_factor": 1.0,
    "eval.top_k": None,
    "model.gradient_checkpointing": False,
    "model.lora": None,
    "trainer.wandb": None,  # operational (where the metrics are also sent)
    "optim.schedule": "constant",
    "optim.min_lr_ratio": 0.0,
    "data.name": None,
    "data.overlong_prompts": "error",
    "data.strip_prefix": None,
    "data.chat_template_kwargs": {},
    "data.max_prompt_tokens": None,
    "data.order": "random",
    "trainer.log_every": None,  # operational (how often a progress line is printed)
    "trainer.stop_grace_s": 25.0,  # operational (how long a stopped step may still take)
    "trainer.keep_checkpoints": None,  # operational (how many step checkpoints stay on disk)
    "trainer.completions_every": 0,  # operational (which steps' rollouts are written out)
}
#: the variant a nested part must be for its ABSENT_MEANS entries to apply
_ABSENT_VARIANTS = {"controller.update": ("rule", "relative"), "controller.anchor": ("mode", "initial")}


#: the keys that pick a part's variant: an override to another variant starts that part from the new
#: variant's defaults (the file's fields of the old one would be unknown to it), as ``controller.name``
#: does for the whole controller section
VARIANT_KEYS = ("controller.update.rule", "controller.anchor.mode", "controller.allocation.rule")


def _section(data: Any, dotted: str) -> Any:
    """The value at ``dotted`` ("controller.update") in nested mappings, or None where a level is missing."""
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, Mapping) else None
    return data


def drop_other_variant(data: dict[str, Any], key: str, value: Any) -> None:
    """Before ``key=value`` (one of :data:`VARIANT_KEYS`) is applied to ``data``: if the part it names
    is a mapping of another variant, replace it by ``{variant_key: value}`` (in place)."""
    part_path, _, field = key.rpartition(".")
    holder_path, _, name = part_path.rpartition(".")
    holder = _section(data, holder_path)
    part = holder.get(name) if isinstance(holder, dict) else None
    if isinstance(part, Mapping) and switches(data, key, part.get(field), value):
        holder[name] = {field: value}


def switches(data: Mapping[str, Any], key: str, written: Any, value: Any) -> bool:
    """Whether ``key=value`` changes what the controller field ``key`` resolves to in ``data`` (``written``:
    the value the file holds), the value read as the override will write it (``"aer"`` quoted is ``aer``)."""
    from entropyctl.config.overrides import _parse_scalar

    return current_value(data, key, written) != (_parse_scalar(value) if isinstance(value, str) else value)


def current_value(data: Mapping[str, Any], key: str, written: Any) -> Any:
    """What the controller field ``key`` (``controller.name``, ``controller.update.rule``, ...) is in ``data``
    now: the controller section's resolved value (a rule or name left out is its default, a first-release
    flat form its migrated rule), else ``written`` when the section does not parse yet. An override to the
    same value is then no switch: the file's fields stay."""
    from entropyctl.controllers.registry import parse_controller_config

    try:
        value: Any = parse_controller_config(data.get("controller"))
        for part in key.split(".")[1:]:
            value = getattr(value, part)
    except (ConfigError, AttributeError):
        return written
    return value


def fill_absent(data: Mapping[str, Any]) -> dict[str, Any]:
    """A written run config with the fields it lacks filled from :data:`ABSENT_MEANS` (a copy)."""
    filled: dict[str, Any] = copy.deepcopy(dict(data))
    for path, value in ABSENT_MEANS.items():
        parent_path, _, key = path.rpartition(".")
        parent = _section(filled, parent_path)
        if not isinstance(parent, dict) or key in parent:
            continue
        variant = _ABSENT_VARIANTS.get(parent_path)
        if variant is not None and parent.get(variant[0]) != variant[1]:
            continue
        parent[key] = copy.deepcopy(value)
    return filled


def parse_written_config(data: Mapping[str, Any], *, source: str | None = None) -> RunConfig:
    """A run directory's ``config.yaml``, parsed: the fields it lacks read as :data:`ABSENT_MEANS`
    says (what that run ran with), not as today's defaults."""
    return parse_run_config(fill_absent(data), source=source, written=True)
