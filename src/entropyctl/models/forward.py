"""The training forward: the policy over prompt + response, keeping only real response tokens.

``response_hidden_states`` feeds the fused log-prob/entropy path (same padding and positions as generation);
``response_logits`` is the full-logits fallback (and the test oracle).

Fused-path support (``supports_fused_head``): the LM head must be a plain linear map ``z = h Wᵀ (+ b)``,
optionally times a constant (Cohere's ``logit_scale``, Granite's ``1/logits_scaling``: folded into ``h``).
Llama, Qwen2/3, Mistral, SmolLM2, GPT-2 style heads qualify; heads with a final-logit soft-cap (Gemma 2/3:
``z = c·tanh(z/c)``) do not, and the trainer must use ``response_logits`` + the reference path for them.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch
import torch.utils.checkpoint
from torch import Tensor
from transformers import PreTrainedModel

from entropyctl.rollout.hf import position_ids_from_mask
from entropyctl.rollout.protocol import Completions

__all__ = [
    "ResponseHiddenStates",
    "ResponseLogits",
    "decoder_layers",
    "enable_gradient_checkpointing",
    "lm_head_weight",
    "response_hidden_states",
    "response_logits",
    "supports_fused_head",
    "check_head",
]


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
    """The constant factor between ``h Wᵀ`` and the logits, for heads we know (1 for plain heads); a head
    scaled some other way is caught by :func:`check_head`."""
    config = model.config
    scale = 1.0
    if getattr(config, "logit_scale", None) is not None:  # Cohere: logits = (h Wᵀ) * logit_scale
        scale *= float(config.logit_scale)
    if getattr(config, "logits_scaling", None) is not None:
        if getattr(config, "model_type", "") == "hyperclovax":  # logits = (h Wᵀ) * logits_scaling
            scale *= float(config.logits_scaling)
        else:  # Granite: logits = (h Wᵀ) / logits_scaling
            scale /= float(config.logits_scaling)
    if getattr(config, "lm_head_multiplier", None) is not None:  # Falcon-H1: logits = (h Wᵀ) * multiplier
        scale *= float(config.lm_head_multiplier)
    return scale


def check_head(model: PreTrainedModel, tokens: int = 6) -> None:
    """Raise ValueError unless the logits the trainer rebuilds from the final hidden states (the LM head,
    :func:`_logit_scale`, a soft-cap) are the model's own on a few tokens: a head transformed in a way we do
    not know (a multiplier on the hidden states, another scale) would train on another distribution than
    the one the rollouts sampled, silently. One forward of ``tokens`` tokens, without gradients."""
    backbone = getattr(model, model.base_model_prefix, None)
    head = model.get_output_embeddings()
    if backbone is None or backbone is model or head is None:
        return  # _backbone_hidden refuses such a model with its own message
    vocab = int(head.weight.shape[0])
    device = head.weight.device
    ids = (torch.arange(tokens, device=device).unsqueeze(0) * 7919 + 11) % max(vocab, 1)
    with torch.no_grad():
        own = model(input_ids=ids, use_cache=False).logits.float()
        rebuilt = head(backbone(input_ids=ids, use_cache=False).last_hidden_state).float() * _logit_scale(
            model
        )
        softcap = getattr(model.config, "final_logit_softcapping", None)
        if softcap is not None:
            rebuilt = torch.tanh(rebuilt / softcap) * softcap
    # a wrong scale moves every logit by a factor; rounding in bf16 / fp16 moves them by a few ulps
    tolerance = (1e-4 if head.weight.dtype in (torch.float32, torch.float64) else 3e-2) * (
        1 + float(own.abs().max())
    )
    error = float((own - rebuilt).abs().max())
    if not error <= tolerance:
        raise ValueError(
            f"{type(model).__name__} (model_type {getattr(model.config, 'model_type', '?')!r}): its logits are not "
            f"the LM head of its final hidden states as entropyctl rebuilds them (largest difference {error:.3g}); "
            "its head scales or transforms them in a way the trainer does not reproduce, so training would score "
            "another distribution than the rollouts sample: not supported"
        )


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


def _checkpointed_forward(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    """A decoder layer's forward that keeps only its inputs for backward and recomputes the rest there,
    whenever autograd records (the update's forward); without grad (rollouts, old log-probs) it is the
    plain forward. Non-reentrant checkpointing: frozen inputs and DDP are fine."""
    forward = type(self).forward.__get__(self)
    if torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The decoder's list of layers: the backbone's ``nn.ModuleList`` of ``num_hidden_layers`` modules."""
    backbone = getattr(model, model.base_model_prefix, None)
    count = getattr(model.config, "num_hidden_layers", None)
    for child in [] if backbone is None else backbone.children():
        if isinstance(child, torch.nn.ModuleList) and len(child) == count:
            return child
    raise ValueError(f"{type(model).__name__}: no list of {count} decoder layers under its backbone")


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each decoder layer's activations in backward instead of keeping them (``model.
    gradient_checkpointing``): activation memory of the layers' inputs instead of all their
    activations, for about one more forward per update.

    Our own wrapper on each layer rather than transformers' switch: that one acts only in training
    mode, and the trainer keeps the policy in eval mode (no dropout, so training log-probs match the
    sampler's). Rollouts and the no-grad passes run the plain forward."""
    for layer in decoder_layers(model):
        # a partial of a module-level function: pickles (torch.save of the whole policy), and deepcopy rebinds it to the copy
        layer.forward = functools.partial(_checkpointed_forward, layer)


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
    if scale != 1.0:  # (h·W + b)·s = (h·s)·W + b·s: a biased head's bias is scaled too
        hidden = hidden * scale
        bias = None if bias is None else bias * scale
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
