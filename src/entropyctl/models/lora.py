"""LoRA adapters on the policy (``model.lora``), through PEFT's adapter injection.

The adapters go *into* the model in place (``peft.inject_adapter_in_model``): the policy stays the same
``transformers`` class, so the trainer's forward, the fused LM head, ``generate``, checkpoints and
DDP see one model as before. Only the adapters train (the base weights are frozen by the injection);
the LM head and the embeddings are never adapted ("all-linear" leaves the output layer out), so the
fused path keeps its plain head.

Anything that leaves the trainer as a plain model — ``entropyctl export``, the vLLM export and weight
sync — takes :func:`entropyctl.rollout.export.plain_state_dict`: the base names, each adapted weight
merged (W + scaling·B·A).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from entropyctl.rollout.export import LORA_ADAPTER, lora_layers

__all__ = ["adapters_disabled", "apply_lora"]


def _peft() -> Any:
    try:
        import peft
    except ImportError as err:
        raise ImportError(
            "model.lora needs the peft package: pip install 'entropyctl[lora]' (or pip install peft)"
        ) from err
    return peft


def apply_lora(model: torch.nn.Module, settings: Any) -> torch.nn.Module:
    """Inject LoRA adapters into ``model`` in place (``settings``: a ``LoraSettings``) and return it.

    B starts at zero, so the adapted model computes exactly what ``model`` did; the base weights are
    frozen, the adapters trainable."""
    peft = _peft()
    targets = settings.target_modules
    config = peft.LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=0.0,  # the policy trains in eval mode: a dropout would never act
        target_modules=targets if isinstance(targets, str) else list(targets),
        bias="none",
    )
    embeddings = [
        getattr(model, name, lambda: None)() for name in ("get_input_embeddings", "get_output_embeddings")
    ]
    try:
        peft.inject_adapter_in_model(config, model, adapter_name=LORA_ADAPTER)
    except ValueError as err:  # e.g. target modules that match nothing
        raise ValueError(f"model.lora: {err}") from None
    adapted = {name: m.get_base_layer() for name, m in lora_layers(model)}
    on_embeddings = [
        name for name, base in adapted.items() if any(base is e for e in embeddings if e is not None)
    ]
    if on_embeddings:  # the fused head, a tied export and the vLLM sync take them plain
        raise ValueError(
            f"model.lora.target_modules: {on_embeddings} are the LM head or the input embeddings, which stay "
            "frozen and plain here; name the decoder's linear layers (e.g. [q_proj, v_proj]) or use 'all-linear'"
        )
    return model


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[None]:
    """Within the block ``model`` computes as its base model: every adapter off (PEFT's own switch,
    without touching ``requires_grad``), each restored after. The KL reference of a LoRA run: the base
    model without a second copy of it."""
    layers = [m for _, m in lora_layers(model)]
    if not layers:  # else the "base model" would be the policy itself, and the KL silently 0
        raise ValueError(
            "adapters_disabled: the model carries no LoRA adapters (model.lora set, policy without?)"
        )
    saved = [m._disable_adapters for m in layers]
    for m in layers:
        m._disable_adapters = True
    try:
        yield
    finally:
        for m, flag in zip(layers, saved, strict=True):
            m._disable_adapters = flag
