"""Tiny TRL set-up shared by tests/test_trl*.py, and the worker they launch with ``accelerate launch``.

Everything is built in code (no downloads): a character tokenizer over ``0-9+=``, a ~30k-parameter
Llama, a dataset of ``a+b=`` prompts with a ``level`` column (level 1: a < 5, level 2: a >= 5), and two
reward functions. ``prompt_reward`` depends only on the prompt (1.0 for level 1, 0.0 for level 2), so every
group accuracy is exactly 1 or 0 and AER's threshold rule gives level 1 no bonus and level 2 the full α;
``digit_reward`` (a "1" in the completion) gives mixed groups.

As a worker: ``accelerate launch --num_processes 2 trl_worker.py OUT_DIR`` trains 3 optimizer steps with 2
gradient-accumulation micro-batches and writes ``OUT_DIR/rank{k}.json``: every micro-batch's local
``Σ H·m`` and ``Σ m`` (recorded from TRL's own entropies), every step's reading and controller state.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, TrainerCallback
from trl import GRPOConfig

from entropyctl.integrations.trl import GRPOTrainer

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for char in "0123456789+=":
        vocab[char] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
    )


def build_model(hidden_size: int = 32, layers: int = 2, seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(SPECIALS) + 12,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def build_dataset() -> Dataset:
    rows = [{"prompt": f"{a}+{b}=", "level": 1 if a < 5 else 2} for a in range(10) for b in range(10)]
    return Dataset.from_list(rows)


def prompt_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    return [1.0 if int(prompt.split("+")[0]) < 5 else 0.0 for prompt in prompts]


def digit_reward(completions: list[str], **_: Any) -> list[float]:
    return [1.0 if "1" in completion else 0.0 for completion in completions]


def tiny_config(output_dir: str, **overrides: Any) -> GRPOConfig:
    settings: dict[str, Any] = {
        "output_dir": output_dir,
        "use_cpu": True,
        "bf16": False,
        "gradient_checkpointing": False,
        "report_to": [],
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        "max_completion_length": 6,
        "max_steps": 3,
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 0,
        "learning_rate": 3e-3,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    settings.update(overrides)
    return GRPOConfig(**settings)


class RecordingTrainer(GRPOTrainer):
    """Records, beside the trainer's own bookkeeping, each loss micro-batch's local ``Σ H·m`` and ``Σ m``
    from the entropies TRL's fused LM head returns (the mask is the completion part of the attention mask)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.micro_batches: list[tuple[float, float]] = []
        self.steps: list[dict[str, Any]] = []
        self.add_callback(_StepRecorder(self))

    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
    ):  # type: ignore[no-untyped-def]
        logps, entropies, aux = super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
        )
        if entropies is not None and self.model.training:
            mask = attention_mask[:, -logits_to_keep:].double()
            self.micro_batches.append((float((entropies.detach().double() * mask).sum()), float(mask.sum())))
        return logps, entropies, aux


class _StepRecorder(TrainerCallback):
    def __init__(self, trainer: RecordingTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        reading = self.trainer.last_reading
        assert reading is not None
        self.trainer.steps.append(
            {
                "step": state.global_step,
                "mean_entropy": reading.mean_entropy,
                "tokens": reading.tokens,
                "state": self.trainer.controller.state_dict(),
                "coef": self.trainer.current_plan().coef.tolist(),
            }
        )


def main(out_dir: str) -> None:
    trainer = RecordingTrainer(
        model=build_model(),
        reward_funcs=[digit_reward],
        args=tiny_config(str(Path(out_dir) / "run"), gradient_accumulation_steps=2, max_steps=3),
        train_dataset=build_dataset(),
        processing_class=build_tokenizer(),
        controller={"name": "aer", "alpha_0": 0.05},
    )
    trainer.train()
    rank = trainer.accelerator.process_index
    record = {
        "rank": rank,
        "world_size": trainer.accelerator.num_processes,
        "micro_batches": trainer.micro_batches,
        "steps": trainer.steps,
        "gradient_accumulation_steps": trainer.args.gradient_accumulation_steps,
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
    }
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1])
