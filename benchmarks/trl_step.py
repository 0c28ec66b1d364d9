"""Seconds per optimizer step of TRL's GRPOTrainer: entropyctl's `aer` vs TRL's own adaptive entropy vs no
entropy term, side by side in one run, on the same tiny Llama (built from a config in code, no downloads),
the same prompts, batch and seed, and the same number of tokens per completion (``min_new_tokens``).

Arms (each a fresh trainer on an identical model copy):
- ``trl_none``: ``trl.GRPOTrainer``, no entropy term (``entropy_coef=0``) — the baseline;
- ``trl_adaptive``: ``trl.GRPOTrainer(use_adaptive_entropy=True)`` with ``entropy_target`` above the policy's
  entropy so its bonus is applied every step (TRL's ±δ rule on one global coefficient);
- ``entropyctl_aer``: ``entropyctl.integrations.trl.GRPOTrainer(controller="aer")``, per-prompt α_i,
  window-global reading, per-level logging (the dataset has a ``level`` column).

A step is timed from ``on_step_begin`` to ``on_step_end`` (generation, reward, loss, backward, optimizer
step), in wall-clock seconds and in CPU seconds of this process. On a shared machine the wall clock mostly
measures the neighbours; the CPU time of a single-threaded run (the default ``--threads 1``) is the cost this
process paid. The arms run in rounds, in rotated order, so a slow spell hits all of them; the table gives
medians over all timed steps, ratios to ``trl_none``, and the spread of that ratio between rounds (the
machine's noise on a whole-step ratio, often larger than 5 % on a busy 2-core machine). So the entropyctl arm
also counts the CPU time spent in its own code (group accuracies, plan, entropy term forward, window
statistics, collective, observe, logging) as a share of its steps' CPU time: a direct reading of the overhead.
Target (measured, not asserted): ``entropyctl_aer`` ≤ 1.05 × ``trl_none``.

    python benchmarks/trl_step.py [--rounds 6] [--steps 8] [--warmup 1] [--threads 1] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import transformers
import trl
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, TrainerCallback

from entropyctl.integrations.trl import GRPOTrainer

ALPHABET = "0123456789+-*="
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for char in ALPHABET:
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


def build_model(hidden: int, layers: int, seed: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(SPECIALS) + len(ALPHABET),
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def build_dataset() -> Dataset:
    rows = [
        {"prompt": f"{a}+{b}=", "answer": str(a + b), "level": 1 if a < 10 else 2}
        for a in range(20)
        for b in range(50)
    ]
    return Dataset.from_list(rows)


def exact_answer(prompts: list[str], completions: list[str], answer: list[str], **_: Any) -> list[float]:
    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer, strict=True)]


def first_digit_matches(
    prompts: list[str], completions: list[str], answer: list[str], **_: Any
) -> list[float]:
    """A reward a random policy sometimes earns, so group accuracies are mixed (as in real training)."""
    return [1.0 if c[:1] == a[:1] else 0.0 for c, a in zip(completions, answer, strict=True)]


class StepTimer(TrainerCallback):
    """Wall-clock and CPU seconds (this process, all its threads) of each optimizer step, and the CPU seconds
    spent in entropyctl's own code during it (when the trainer counts them)."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.own_cpu: list[float] = []
        self.trainer: Any = None
        self._start = (0.0, 0.0, 0.0)

    def _own(self) -> float:
        return float(getattr(self.trainer, "own_cpu_s", 0.0))

    def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self._start = (time.perf_counter(), time.process_time(), self._own())

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self.wall.append(time.perf_counter() - self._start[0])
        self.cpu.append(time.process_time() - self._start[1])
        self.own_cpu.append(self._own() - self._start[2])


class TimedGRPOTrainer(GRPOTrainer):
    """entropyctl's trainer with its own per-step work timed (CPU seconds): group accuracies, the plan, the
    entropy term's forward, the window statistics, the collective + observe + logging. Not timed: the entropy
    term's backward (elementwise over [completions, tokens]) and a few tensor copies."""

    OWN = ("_completion_correct", "current_plan", "_entropy_term", "_accumulate", "_observe_window")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.own_cpu_s = 0.0
        for name in self.OWN:
            setattr(self, name, self._timed(getattr(self, name)))

    def _timed(self, method: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            try:
                return method(*args, **kwargs)
            finally:
                self.own_cpu_s += time.process_time() - start

        return timed


ARMS: dict[str, dict[str, Any]] = {
    "trl_none": {"trainer": trl.GRPOTrainer, "config": {}, "extra": {}},
    "trl_adaptive": {
        "trainer": trl.GRPOTrainer,
        "config": {"use_adaptive_entropy": True, "entropy_coef": 0.01, "entropy_target": 100.0},
        "extra": {},
    },
    "entropyctl_aer": {
        "trainer": TimedGRPOTrainer,
        "config": {},
        # the weighted sum decides correctness, as it did when the committed timings were taken (several
        # reward functions need accuracy_reward since 2026-12-07)
        "extra": {"controller": {"name": "aer", "alpha_0": 0.01}, "accuracy_reward": "weighted_sum"},
    },
}


def run_arm(name: str, cli: argparse.Namespace, out_dir: str) -> tuple[list[float], list[float], list[float]]:
    arm = ARMS[name]
    args = trl.GRPOConfig(
        output_dir=out_dir,
        use_cpu=True,
        bf16=False,
        report_to=[],
        disable_tqdm=True,
        gradient_checkpointing=False,
        save_strategy="no",
        logging_steps=1,
        seed=cli.seed,
        learning_rate=1e-4,
        per_device_train_batch_size=cli.prompts * cli.group,
        num_generations=cli.group,
        max_completion_length=cli.completion_tokens,
        # every completion is exactly max_completion_length tokens in every arm: equal work per step
        generation_kwargs={"min_new_tokens": cli.completion_tokens},
        max_steps=cli.warmup + cli.steps,
        **arm["config"],
    )
    timer = StepTimer()
    trainer = arm["trainer"](
        model=build_model(cli.hidden, cli.layers, cli.seed),
        reward_funcs=[exact_answer, first_digit_matches],
        args=args,
        train_dataset=build_dataset(),
        processing_class=build_tokenizer(),
        callbacks=[timer],
        **arm["extra"],
    )
    timer.trainer = trainer
    trainer.train()
    return timer.wall[cli.warmup :], timer.cpu[cli.warmup :], timer.own_cpu[cli.warmup :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per arm per round")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--completion-tokens", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "trl_step.json")
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)
    transformers.logging.set_verbosity_error()

    names = list(ARMS)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    own: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(cli.rounds):
            order = names[round_index % len(names) :] + names[: round_index % len(names)]
            for name in order:
                arm_wall, arm_cpu, arm_own = run_arm(name, cli, str(Path(tmp) / f"{name}-{round_index}"))
                wall[name] += arm_wall
                cpu[name] += arm_cpu
                own[name] += arm_own

    params = sum(p.numel() for p in build_model(cli.hidden, cli.layers, cli.seed).parameters())
    conditions = {
        "model": f"Llama d={cli.hidden}, {cli.layers} layers, vocab {len(SPECIALS) + len(ALPHABET)}, {params} params, fp32",
        "batch": f"{cli.prompts} prompts x {cli.group} completions, exactly {cli.completion_tokens} new tokens each",
        "steps": f"{cli.rounds} rounds x ({cli.warmup} warm-up + {cli.steps} timed) optimizer steps per arm",
        "threads": cli.threads,
        "device": "cpu",
        "platform": platform.platform(),
        "load_average_at_end": os.getloadavg(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "seed": cli.seed,
    }
    rows = []
    for name in names:
        rows.append(
            {
                "arm": name,
                "cpu_median_s": statistics.median(cpu[name]),
                "cpu_ratio_to_trl_none": statistics.median(cpu[name]) / statistics.median(cpu["trl_none"]),
                "wall_median_s": statistics.median(wall[name]),
                "wall_min_s": min(wall[name]),
                "wall_ratio_to_trl_none": statistics.median(wall[name]) / statistics.median(wall["trl_none"]),
                "steps": len(cpu[name]),
                # the spread of the ratio between rounds: how much of a whole-step ratio is the machine's noise
                "cpu_ratio_by_round": [
                    statistics.median(cpu[name][r * cli.steps : (r + 1) * cli.steps])
                    / statistics.median(cpu["trl_none"][r * cli.steps : (r + 1) * cli.steps])
                    for r in range(cli.rounds)
                ],
                # entropyctl's own code as a share of the same steps' CPU time (0 for the TRL arms)
                "own_cpu_fraction": sum(own[name]) / sum(cpu[name]),
            }
        )
    print("\n".join(f"{k}: {v}" for k, v in conditions.items()))
    print(
        "\n| arm | CPU s/step (median) | CPU / trl_none | entropyctl's own code, share of CPU | "
        "CPU / trl_none per round (min-max) | wall s/step (median) | wall min | wall / trl_none | steps |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['arm']} | {row['cpu_median_s']:.3f} | {row['cpu_ratio_to_trl_none']:.3f} | "
            f"{100 * row['own_cpu_fraction']:.2f} % | "
            f"{min(row['cpu_ratio_by_round']):.2f}-{max(row['cpu_ratio_by_round']):.2f} | "
            f"{row['wall_median_s']:.3f} | {row['wall_min_s']:.3f} | {row['wall_ratio_to_trl_none']:.3f} | {row['steps']} |"
        )
    cli.out.parent.mkdir(parents=True, exist_ok=True)
    cli.out.write_text(
        json.dumps(
            {"conditions": conditions, "rows": rows, "wall_s": wall, "cpu_s": cpu, "own_cpu_s": own}, indent=1
        )
    )
    print(f"\nwrote {cli.out}")


if __name__ == "__main__":
    main()
