"""The default rollout engine: Hugging Face ``transformers`` ``model.generate`` on the policy itself.

``HFRolloutEngine`` samples with left-padded prompts and explicit pad-aware position ids ``cumsum(mask) - 1``
(the training forward in :mod:`entropyctl.models.forward` uses the same), optionally returning the sampled
tokens' log-probs under the temperature-scaled full distribution.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from entropyctl.rollout.protocol import (
    Completions,
    SamplingSettings,
    check_generate_args,
    decode_responses,
    stop_token_ids,
)

__all__ = ["HFRolloutEngine", "left_pad", "position_ids_from_mask"]


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
    decoding (its ``logprobs`` are then taken at temperature 1). Responses stop at the first of
    ``stop_token_ids`` (the tokenizer's EOS and the model's ``generation_config.eos_token_id``); the
    response mask covers the sampled tokens up to and including it, and positions after it hold pad.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        try:
            self.stop_token_ids = stop_token_ids(tokenizer, model)
        except ValueError as err:
            raise ValueError(f"HFRolloutEngine: {err}") from None
        self.model = model
        self.tokenizer = tokenizer
        self.eos_token_id = self.stop_token_ids[0]
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else self.eos_token_id)

    def sync_weights(self, model: torch.nn.Module, *, force: bool = False) -> None:
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
            eos_token_id=list(self.stop_token_ids),
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
                # no position_ids: generate derives them from the mask at every step (cumsum − 1, as the
                # training forward's position_ids_from_mask); passed in, transformers before 5 kept the
                # prompt's last position for every generated token
                attention_mask=mask.to(device),
                generation_config=generation_config,
                logits_processor=processors,
            )
        response = output.sequences[:, ids.shape[1] :].to("cpu")
        is_eos = torch.isin(response, torch.tensor(self.stop_token_ids))
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
        return decode_responses(self.tokenizer, completions)
