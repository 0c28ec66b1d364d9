"""Benchmark: how ``algorithm.micro_batch_tokens`` packs a mini-batch — in its order, or longest rows first.

A token budget caps each micro-batch at ``rows × (longest prompt + longest response)`` padded tokens
(:func:`entropyctl.trainer.module.cut_by_tokens`). Taken in the mini-batch's (shuffled) order, a long
row next to short ones pads them all to its width; taken longest first, rows of like length share a
piece. This counts, for both rules on the same rows, the forwards a mini-batch needs and the padded
tokens they carry over its real ones — counts, not timings: a forward's cost grows with its padded
tokens (and attention's with their square), which is what the budget bounds.

The lengths are drawn, not measured on a run of ours (our CPU tasks' responses are a few dozen tokens):
``--groups`` prompts of ``--group-size`` responses, each group's prompt uniform in [40, 400] tokens,
responses log-normal (median ``--median`` tokens, σ ``--sigma``) cut to [16, ``--max-new-tokens``] —
the long tail of a math RLVR run — shuffled as the update shuffles a step's rows, one mini-batch of
all of them, ``--draws`` draws.

    python benchmarks/micro_batch_packing.py [--budget 32768] [--draws 20]

Prints a table and writes JSON (default benchmarks/results/micro_batch_packing.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path
from typing import Any

import torch

from entropyctl.trainer.module import cut_by_tokens

ROOT = Path(__file__).resolve().parents[1]


def _draw(args: argparse.Namespace, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(40, 401, (args.groups,), generator=g).repeat_interleave(args.group_size)
    n = args.groups * args.group_size
    log_len = torch.randn(n, generator=g, dtype=torch.float64) * args.sigma
    responses = (args.median * log_len.exp()).round().clamp(16, args.max_new_tokens).long()
    order = torch.randperm(n, generator=g)
    return order, prompts, responses


def _count(rows: torch.Tensor, prompts: torch.Tensor, responses: torch.Tensor, **kw: Any) -> dict[str, float]:
    pieces = cut_by_tokens(rows, prompts, responses, **kw)
    padded = sum(len(p) * int(prompts[p].max() + responses[p].max()) for p in pieces)
    real = int((prompts + responses).sum())
    over = sum(1 for p in pieces if len(p) * int(prompts[p].max() + responses[p].max()) > kw["budget"])
    return {"forwards": len(pieces), "padding": padded / real - 1.0, "single_rows_over_budget": over}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=int, default=32768)
    parser.add_argument("--groups", type=int, default=64)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--median", type=float, default=600.0)
    parser.add_argument("--sigma", type=float, default=0.8)
    parser.add_argument("--max-new-tokens", type=int, default=4096)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/micro_batch_packing.json")
    args = parser.parse_args()

    per_draw = []
    for seed in range(args.draws):
        rows, prompts, responses = _draw(args, seed)
        in_order = _count(rows, prompts, responses, budget=args.budget, longest_first=False)
        longest = _count(rows, prompts, responses, budget=args.budget, longest_first=True)
        per_draw.append({"seed": seed, "in_order": in_order, "longest_first": longest})

    def summary(rule: str, key: str) -> float:
        return statistics.fmean(d[rule][key] for d in per_draw)

    ratio = statistics.fmean(d["longest_first"]["forwards"] / d["in_order"]["forwards"] for d in per_draw)
    print(
        f"one mini-batch of {args.groups}×{args.group_size} rows, budget {args.budget} tokens, "
        f"{args.draws} draws (mean)"
    )
    print("| rule | forwards | padded tokens over real ones |")
    print("|---|---|---|")
    for rule in ("in_order", "longest_first"):
        print(f"| {rule} | {summary(rule, 'forwards'):.1f} | {summary(rule, 'padding'):+.1%} |")
    print(f"forwards, longest first / in order: {ratio:.2f} (mean of the draws' ratios)")
    record = {
        "benchmark": "micro_batch_packing",
        "what": "counts of forwards and padded tokens, not timings; lengths drawn, not measured",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mean": {
            rule: {key: summary(rule, key) for key in ("forwards", "padding")}
            for rule in ("in_order", "longest_first")
        },
        "forwards_ratio_longest_first_over_in_order": ratio,
        "draws": per_draw,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
