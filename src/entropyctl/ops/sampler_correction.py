"""Importance weights for the sampler–trainer mismatch (truncated / masked importance sampling).

A rollout engine (vLLM above all: other kernels, bf16, batched sampling) does not sample from exactly the
distribution the trainer computes. With ``q`` the sampler's log-prob of each sampled token (the engine's,
``Completions.logprobs``) and ``p`` the trainer's log-prob of it under the policy that sampled it (the old
log-prob of the loss, before the step's first update), the policy-gradient term of a token is an
estimate under ``q`` of an expectation under ``p``; its importance weight is

    r_t = exp(p_t − q_t)                                   token modes
    r_t = exp(Σ_{s ∈ o_i} (p_s − q_s))   for every t ∈ o_i  sequence modes (the response's ratio)

and the weight the loss multiplies the token's clipped surrogate by (detached: it carries no gradient) is

    token_truncate / sequence_truncate   w = clip(r, clip_min, clip_max)   (TIS; an unset bound: none)
    token_mask     / sequence_mask       w = r where clip_min ≤ r ≤ clip_max, else 0  (MIS: outside the
                                         bounds the token, or the whole response, leaves the policy-gradient term)
    monitor                              w = 1 (the mismatch is measured, nothing is corrected)

The same four modes, by these names, are TRL's ``vllm_importance_sampling_mode``; the token-level
truncated form is verl's ``rollout_is: token``. The measured mismatch: ``kl`` is the k3 estimate of
KL(sampler ‖ trainer) per token, ``r − 1 − log r`` with ``r = exp(p − q)`` (≥ 0, unbiased under ``q``),
``abs_diff`` is ``|p − q|``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from entropyctl.ops.losses import response_sums

__all__ = ["CORRECTION_MODES", "CorrectionMode", "SamplerCorrection", "sampler_correction"]

#: the modes, one list for this function and the config's ``algorithm.rollout_correction.mode``
CorrectionMode = Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask", "monitor"]
CORRECTION_MODES: tuple[str, ...] = get_args(CorrectionMode)


@dataclass(frozen=True)
class SamplerCorrection:
    """Per token ``[N]``: the loss weight ``w``, whether a bound acted on it (``bounded``: truncated or
    masked), and the mismatch measures ``kl`` (k3) and ``abs_diff`` (|p − q|), all float64 but ``bounded``."""

    weight: Tensor
    bounded: Tensor
    kl: Tensor
    abs_diff: Tensor


def sampler_correction(
    logprob: Tensor,
    sampler_logprob: Tensor,
    seq_index: Tensor,
    mode: str,
    clip_min: float | None = None,
    clip_max: float | None = None,
) -> SamplerCorrection:
    """Importance weights of the module docstring for the tokens ``[N]`` of a batch.

    ``logprob``: the trainer's log-prob of each token under the sampling policy (p); ``sampler_logprob``:
    the engine's (q); ``seq_index``: each token's response (row) — tokens of one response share its
    sequence ratio. Every token passed counts (select the loss's tokens first)."""
    if mode not in CORRECTION_MODES:
        raise ValueError(f"mode must be one of {', '.join(CORRECTION_MODES)}; got {mode!r}")
    if logprob.dim() != 1 or sampler_logprob.shape != logprob.shape or seq_index.shape != logprob.shape:
        raise ValueError(
            "logprob, sampler_logprob and seq_index must be per-token tensors [N] of one length, got "
            f"{tuple(logprob.shape)}, {tuple(sampler_logprob.shape)}, {tuple(seq_index.shape)}"
        )
    if clip_min is not None and clip_max is not None and not clip_min <= clip_max:
        raise ValueError(f"clip_min must be <= clip_max, got {clip_min} > {clip_max}")
    p = logprob.detach().to(torch.float64)
    q = sampler_logprob.detach().to(p.device, torch.float64)
    if not bool(torch.isfinite(p).all() and torch.isfinite(q).all()):
        raise ValueError("log-probs must be finite (a sampled token has a nonzero probability)")
    diff = p - q
    # k3 = r − 1 − log r with log r = diff; expm1 keeps it exact near r = 1, where the measure lives
    kl = torch.expm1(diff) - diff
    abs_diff = diff.abs()
    if mode == "monitor":
        ones = torch.ones_like(diff)
        return SamplerCorrection(ones, torch.zeros_like(diff, dtype=torch.bool), kl, abs_diff)
    log_r = diff
    if mode.startswith("sequence"):
        log_r, _ = response_sums(diff, seq_index)
    # exp in float64 overflows only past log r ≈ 709, to inf, which every upper bound then truncates or masks
    ratio = torch.exp(log_r)
    low = torch.zeros_like(ratio, dtype=torch.bool) if clip_min is None else ratio < clip_min
    high = torch.zeros_like(ratio, dtype=torch.bool) if clip_max is None else ratio > clip_max
    bounded = low | high
    if mode.endswith("truncate"):
        weight = ratio
        if clip_min is not None:
            weight = weight.clamp_min(clip_min)
        if clip_max is not None:
            weight = weight.clamp_max(clip_max)
    else:  # mask
        weight = torch.where(bounded, torch.zeros_like(ratio), ratio)
    return SamplerCorrection(weight, bounded, kl, abs_diff)
