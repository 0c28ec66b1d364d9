"""A policy written as a plain ``transformers`` model directory: what vLLM loads (``export_policy``) and
what ``entropyctl export`` hands to any other tool (``AutoModelForCausalLM.from_pretrained``)."""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from entropyctl.cache import usual_permissions

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["LORA_ADAPTER", "lora_layers", "plain_state_dict", "save_policy"]

#: the adapter name entropyctl.models.lora injects under
LORA_ADAPTER = "default"


def lora_layers(model: torch.nn.Module) -> list[tuple[str, Any]]:
    """``(name, layer)`` of every PEFT LoRA layer in ``model`` (none without peft installed)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # no peft: no adapters either
        return []
    return [(name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer)]


def plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` as the plain model's. Without LoRA adapters (``model.lora``) it is the
    state dict itself; with them, each adapted layer's ``base_layer.*`` under the layer's own name, its
    weight merged with the adapter (W + scaling·B·A, in the weight's dtype; a new tensor), and the
    adapters' own tensors left out."""
    state = model.state_dict()
    layers = lora_layers(model)
    if not layers:
        return state
    merged = {}
    with torch.no_grad():
        for name, layer in layers:
            weight = layer.get_base_layer().weight
            merged[f"{name}.weight"] = weight + layer.get_delta_weight(LORA_ADAPTER).to(weight.dtype)
    plain: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if ".lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        plain[key] = merged.get(key, tensor)
    return plain


def save_policy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: str | Path, *, exist_ok: bool = False
) -> Path:
    """Write ``model`` + ``tokenizer`` to the directory ``target`` (safetensors, config, tokenizer files);
    return it.

    Atomic: written to a temporary sibling directory and renamed into place, so a crash never leaves a
    half-written model behind. ``target`` must not exist, unless ``exist_ok`` and it already holds a
    model (another writer's finished copy: it is kept). Works for GGUF-loaded models (which refuse
    ``save_pretrained``): the weights are copied into a fresh model of the same class built from the
    config, in the model's dtype; LoRA adapters are merged into the weights they adapt.
    """
    from transformers import AutoModelForCausalLM

    target = Path(target).expanduser()
    if target.exists() and not (exist_ok and (target / "config.json").is_file()):
        raise FileExistsError(f"{target}: already exists; choose a new directory for the model")
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        config = model.config.__class__.from_dict(model.config.to_dict())
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # GGUF loading leaves it; the copy holds plain dense weights
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
        # LoRA adapters (model.lora) merged into their layers: a plain model of the base names
        missing, unexpected = plain.load_state_dict(plain_state_dict(model), strict=False, assign=True)
        if plain.config.tie_word_embeddings:
            plain.tie_weights()
            missing = [k for k in missing if k != "lm_head.weight"]
        missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
        if missing or unexpected:
            raise RuntimeError(
                f"save_policy: {type(model).__name__}'s weights do not fit a plain "
                f"{type(plain).__name__} (missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        # Non-persistent buffers (rotary inv_freq) were created on meta: rebuild them on the CPU.
        for module in plain.modules():
            if hasattr(module, "inv_freq") and module.inv_freq.is_meta:
                rope_init = getattr(module, "rope_init_fn", None)
                if rope_init is not None:
                    inv_freq, _ = rope_init(module.config, torch.device("cpu"))
                    module.register_buffer("inv_freq", inv_freq, persistent=False)
        if getattr(model, "generation_config", None) is not None:
            # the trained model's stop tokens (an instruct model's end of turn beside its eos, which the
            # config alone does not hold): the exported model generates as the trained policy did
            plain.generation_config = copy.deepcopy(model.generation_config)
        plain.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        usual_permissions(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (exist_ok and (target / "config.json").is_file()):  # not a concurrent writer's copy
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
