"""The rollout-engine protocol shared by the Hugging Face and vLLM engines (design.md §5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "GREEDY_BELOW",
    "SamplingSettings",
    "Completions",
    "RolloutEngine",
    "check_generate_args",
    "decode_responses",
    "stop_token_ids",
]


#: vLLM decodes greedily below this temperature (its ``_SAMPLING_EPS``) and then takes one sample only; the
#: HF engine samples there. The trainer's and ``entropyctl evaluate``'s checks and the vLLM engine read it.
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling for rollouts. ``temperature`` is also the temperature of the training log-probs and
    entropy (logits are divided by it on both sides)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    max_new_tokens: int = 64
    seed: int | None = None
    return_logprobs: bool = False


def check_generate_args(engine: str, n: int, sampling: SamplingSettings) -> None:
    """The argument checks every engine's ``generate`` shares: one message per mistake."""
    if n < 1:
        raise ValueError(f"{engine}.generate: n={n}, expected n >= 1")
    if sampling.max_new_tokens < 1:
        raise ValueError(f"sampling.max_new_tokens={sampling.max_new_tokens}, expected >= 1")
    if sampling.temperature < 0:
        raise ValueError(f"sampling.temperature={sampling.temperature}, expected >= 0 (0 = greedy)")
    if not 0 < sampling.top_p <= 1:
        raise ValueError(f"sampling.top_p={sampling.top_p}, expected 0 < top_p <= 1 (1 = off)")
    if sampling.top_k < 0:
        raise ValueError(f"sampling.top_k={sampling.top_k}, expected >= 0 (0 = off; vLLM's and verl's -1)")


def stop_token_ids(tokenizer: Any, model: Any = None) -> tuple[int, ...]:
    """The token ids a response stops at: the tokenizer's EOS first, then every id of the model's
    ``generation_config.eos_token_id`` (an int or a list) that is not already there.

    Chat models often end a turn in a token other than the tokenizer's EOS (Llama 3 Instruct's
    ``<|eot_id|>`` beside ``<|end_of_text|>``, Qwen2.5 Instruct's ``<|im_end|>`` beside
    ``<|endoftext|>``): stopping at the tokenizer's alone would run such a model to ``max_new_tokens``
    and mark every response truncated. Raises if there is none at all.
    """
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None)
    for token in [extra] if isinstance(extra, int) else list(extra or []):
        if int(token) not in ids:
            ids.append(int(token))
    if not ids:
        raise ValueError(
            "the tokenizer has no eos token and the model's generation_config none either; responses could never stop"
        )
    return tuple(ids)


def decode_responses(tokenizer: Any, completions: Completions) -> list[str]:
    """The response texts of ``completions`` (the masked tokens; special tokens, EOS included, removed)."""
    return [
        str(tokenizer.decode(row[mask.bool()].tolist(), skip_special_tokens=True))
        for row, mask in zip(completions.response_ids, completions.response_mask, strict=True)
    ]


@dataclass
class Completions:
    """``n`` completions for each of ``P`` prompts, in prompt-major order (row ``i*n + j``).

    prompt_ids: ``[P*n, Lp]`` left-padded prompt token ids; prompt_mask: ``[P*n, Lp]`` 1 on real tokens.
    response_ids: ``[P*n, Lr]`` right-padded sampled token ids; response_mask: ``[P*n, Lr]`` 1 on
    sampled tokens up to and including the first stop token (``stop_token_ids``: EOS).
    truncated: ``[P*n]`` bool, True where the response hit ``max_new_tokens`` without a stop token.
    logprobs: ``[P*n, Lr]`` the engine's own sampled-token log-probs when asked, else None.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    truncated: Tensor
    logprobs: Tensor | None = None

    @property
    def num_sequences(self) -> int:
        return int(self.response_ids.shape[0])

    def response_lengths(self) -> Tensor:
        return self.response_mask.sum(dim=1)

    def to(self, device: torch.device | str) -> Completions:
        return Completions(
            prompt_ids=self.prompt_ids.to(device),
            prompt_mask=self.prompt_mask.to(device),
            response_ids=self.response_ids.to(device),
            response_mask=self.response_mask.to(device),
            truncated=self.truncated.to(device),
            logprobs=None if self.logprobs is None else self.logprobs.to(device),
        )


@runtime_checkable
class RolloutEngine(Protocol):
    """Anything that can sample completions from the current policy."""

    def generate(self, prompt_ids: list[list[int]], n: int, sampling: SamplingSettings) -> Completions:
        """Sample ``n`` completions for each prompt (token-id lists, no padding)."""
        ...

    def sync_weights(self, model: torch.nn.Module, *, force: bool = False) -> Any:
        """Make the engine sample from ``model``'s current weights (a no-op for the HF engine); ``force``:
        load them even where the engine's own check finds no change (the trainer stepped them)."""
        ...
