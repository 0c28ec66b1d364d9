"""Benchmark: what ``algorithm.importance_level: sequence`` (GSPO) costs in the fused loss.

The fused policy loss (forward + backward, an entropy term and a KL term on) at SmolLM2-135M's head sizes
(hidden 576, vocabulary 49152) on random hidden states, with the token-level ratio and with the response's
ratio. The sequence level reads every token's log-prob in a first pass of the LM head before the pass that
forms the gradient, so its expected cost is about one more forward of the head per mini-batch. Off-policy
old log-probs (ratios away from 1), responses of ``--response`` tokens. Arms alternate, ``--repeats``
rounds; the median of each and their ratio are printed (a shared CPU: read the ratio).

    python benchmarks/sequence_ratio.py [--sequences 8] [--response 256] [--repeats 5] [--threads 2]

Prints a table and writes JSON (default benchmarks/results/sequence_ratio.json).
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

from entropyctl.ops.losses import fused_policy_loss

ROOT = Path(__file__).resolve().parents[1]
HIDDEN, VOCAB = 576, 49152  # SmolLM2-135M


def _inputs(sequences: int, response: int, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    n = sequences * response
    hidden = torch.randn(n, HIDDEN, generator=g) * 0.5
    weight = torch.randn(VOCAB, HIDDEN, generator=g) * 0.05
    return {
        "hidden": hidden.requires_grad_(True),
        "weight": weight.requires_grad_(True),
        "targets": torch.randint(0, VOCAB, (n,), generator=g),
        "old": -11.0 + 0.3 * torch.randn(n, generator=g),  # near log(1/V): ratios away from 1 either way
        "adv": torch.randn(sequences, generator=g).repeat_interleave(response),
        "ref": -11.0 + 0.3 * torch.randn(n, generator=g),
        "rows": torch.arange(sequences).repeat_interleave(response),
    }


def _step(x: dict[str, Any], level: str) -> float:
    x["hidden"].grad, x["weight"].grad = None, None
    start = time.perf_counter()
    out = fused_policy_loss(
        x["hidden"],
        x["weight"],
        x["targets"],
        x["old"],
        x["adv"],
        0.005,
        torch.ones_like(x["old"]),
        0.2,
        0.2,
        ref_logprob=x["ref"],
        kl_coef=0.05,
        seq_index=x["rows"] if level == "sequence" else None,
    )
    out.loss.backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--response", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sequence_ratio.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = _inputs(args.sequences, args.response, seed=0)
    _step(x, "token")  # warm-up
    times: dict[str, list[float]] = {"token": [], "sequence": []}
    for _ in range(args.repeats):
        for level in times:
            times[level].append(_step(x, level))
    median = {level: statistics.median(t) for level, t in times.items()}
    ratios = [s / t for s, t in zip(times["sequence"], times["token"], strict=True)]
    print(
        f"fused policy loss, forward + backward: {args.sequences} x {args.response} tokens, head {VOCAB} x {HIDDEN}"
    )
    print("| level | s (median) | all rounds |")
    print("|---|---|---|")
    for level, t in times.items():
        print(f"| {level} | {median[level]:.3f} | {', '.join(f'{v:.3f}' for v in t)} |")
    print(
        f"sequence / token: {statistics.median(ratios):.2f}x (per round: {', '.join(f'{r:.2f}' for r in ratios)})"
    )
    result = {
        "config": vars(args) | {"out": str(args.out), "hidden": HIDDEN, "vocab": VOCAB},
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
        "seconds": times,
        "median_seconds": median,
        "ratio_sequence_over_token": statistics.median(ratios),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
