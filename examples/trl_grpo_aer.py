"""A TRL GRPO script switched to AER: one import and one argument differ from plain TRL.

Runs on a CPU with no downloads (about 10 s of CPU time, 2026-12-07; longer on a busy machine): a tiny Llama and a
character tokenizer are built in code, the prompts are `a+b=` sums in two difficulty levels (a `level`
column, so the per-level metrics are logged), and the reward is a toy check (the first character of the
completion is the answer's first digit) that a random policy sometimes passes, so group accuracies are
mixed and AER's difficulty-aware coefficients have something to act on.

    python examples/trl_grpo_aer.py
"""

from __future__ import annotations

import random

import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import GRPOConfig

from entropyctl.integrations.trl import GRPOTrainer  # was: from trl import GRPOTrainer


def char_tokenizer(alphabet: str = "0123456789+=") -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", *alphabet])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
        padding_side="left",
    )  # fmt: skip


def first_digit_reward(completions: list[str], answer: list[str], **_: object) -> list[float]:
    return [
        1.0 if completion[:1] == gold[:1] else 0.0
        for completion, gold in zip(completions, answer, strict=True)
    ]


def main() -> None:
    tokenizer = char_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=192, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
            pad_token_id=0, bos_token_id=1, eos_token_id=2,
        )
    )  # fmt: skip
    rng = random.Random(0)
    rows = []
    for _ in range(512):
        level = rng.choice([1, 2])
        a, b = (
            (rng.randrange(5), rng.randrange(5))
            if level == 1
            else (rng.randrange(10, 100), rng.randrange(10, 100))
        )
        rows.append({"prompt": f"{a}+{b}=", "answer": str(a + b), "level": level})

    args = GRPOConfig(
        output_dir="runs/trl_grpo_aer",
        use_cpu=True, bf16=False, gradient_checkpointing=False, report_to=[], disable_tqdm=True,
        per_device_train_batch_size=64, num_generations=8, max_completion_length=4,
        learning_rate=3e-3, max_steps=20, logging_steps=1, save_strategy="no", seed=0,
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=first_digit_reward,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        controller={"name": "aer", "tau": 0.4},  # the one new argument
    )
    trainer.train()

    print(
        f"\n{'step':>4} {'reward':>7} {'entropy':>8} {'target':>7} {'alpha':>8} {'coef L1':>8} {'coef L2':>8}"
    )
    for row in trainer.state.log_history:
        if "entropyctl/entropy" in row:
            print(
                f"{row['step']:>4} {row['reward']:>7.3f} {row['entropyctl/entropy']:>8.4f} "
                f"{row['entropyctl/target_entropy']:>7.4f} {row['entropyctl/alpha']:>8.5f} "
                # a level with no prompts in a step has no entry in that step
                f"{row.get('entropyctl/coef_level_1', float('nan')):>8.5f} "
                f"{row.get('entropyctl/coef_level_2', float('nan')):>8.5f}"
            )


if __name__ == "__main__":
    main()
