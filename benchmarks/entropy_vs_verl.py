"""Our fused log-prob/entropy path beside verl's torch `FusedLinearForPPO`, on the same inputs.

Accuracy: fp32 entropy and log-prob error of each against an fp64 full-logits reference, on random
shapes with the temperature drawn from [0.5, 1.5]. Speed: forward + backward seconds of each at one
shape, side by side in one process: a warm-up each, then `--repeats` rounds of both in alternating
order, the ratio taken within each round.

verl is optional and heavy (its package imports ray): install it with `pip install --no-deps verl`;
this script loads only its self-contained `utils/experimental/torch_functional.py` (torch only).

    python benchmarks/entropy_vs_verl.py [--cases 12] [--speed-shape 4096,256,65536] [--repeats 3]

Prints a table and writes benchmarks/results/entropy_vs_verl.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from entropyctl.ops.entropy import fused_logprob_entropy, token_logprob_entropy

RESULTS = Path(__file__).resolve().parent / "results" / "entropy_vs_verl.json"


def load_verl_fused() -> Any | None:
    """verl's FusedLinearForPPO class, loaded from its file (no `verl` package import), or None."""
    spec = importlib.util.find_spec("verl")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "utils" / "experimental" / "torch_functional.py"
    if not path.exists():
        return None
    module_spec = importlib.util.spec_from_file_location("verl_torch_functional", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.FusedLinearForPPO


def _verl_version() -> str:
    try:
        from importlib.metadata import version

        return version("verl")
    except Exception:  # noqa: BLE001 - not installed
        return "not installed"


def reference64(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float):
    logits = (hidden.double() @ weight.double().T) / temperature
    logp = torch.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, targets[:, None]).squeeze(-1), entropy


def accuracy(cases: int, seed: int, verl_cls: Any | None) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for case in range(cases):
        n = int(torch.randint(16, 512, (1,), generator=generator))
        d = int(torch.randint(16, 256, (1,), generator=generator))
        v = int(torch.randint(512, 16384, (1,), generator=generator))
        temperature = float(0.5 + torch.rand((), generator=generator))
        scale = float(1.0 + 4.0 * torch.rand((), generator=generator))  # logit spread
        hidden = torch.randn(n, d, generator=generator) * scale / d**0.5
        weight = torch.randn(v, d, generator=generator)
        targets = torch.randint(0, v, (n,), generator=generator)
        ref_lp, ref_h = reference64(hidden, weight, targets, temperature)
        row: dict[str, Any] = {"case": case, "N": n, "d": d, "V": v, "T": round(temperature, 3)}
        with torch.no_grad():
            paths = {
                "fused": fused_logprob_entropy(hidden, weight, targets, temperature=temperature),
                "full_logits": token_logprob_entropy(hidden @ weight.T, targets, temperature=temperature),
            }
            if verl_cls is not None:
                paths["verl"] = verl_cls(chunk_size=512)(hidden, weight, targets, temperature)
        for name, (lp, h) in paths.items():
            row[f"{name}_entropy_err"] = float((h.double() - ref_h).abs().max())
            row[f"{name}_logprob_err"] = float((lp.double() - ref_lp).abs().max())
        rows.append(row)
    return rows


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def speed(shape: tuple[int, int, int], repeats: int, verl_cls: Any | None) -> dict[str, Any]:
    """Each path's forward + backward at ``shape``, side by side: one warm-up each, then ``repeats``
    rounds that run every path once, in an order that alternates by round, so a slow minute of a shared
    machine falls on both alike; verl ÷ fused is taken within each round (median and range)."""
    n, d, v = shape
    generator = torch.Generator().manual_seed(0)
    hidden = (torch.randn(n, d, generator=generator) / d**0.5).requires_grad_()
    weight = torch.randn(v, d, generator=generator).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=generator)
    g_lp, g_h = torch.randn(n, generator=generator), torch.randn(n, generator=generator)

    def step(forward: Any) -> None:
        hidden.grad = weight.grad = None
        lp, h = forward()
        torch.autograd.backward([lp, h], [g_lp, g_h])

    paths = {"fused": lambda: step(lambda: fused_logprob_entropy(hidden, weight, targets))}
    if verl_cls is not None:
        module = verl_cls(chunk_size=512)
        paths["verl"] = lambda: step(lambda: module(hidden, weight, targets, 1.0))
    for fn in paths.values():
        fn()  # warm-up, not timed
    names = list(paths)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(_timed(paths[name]))
    out: dict[str, Any] = {name: statistics.median(t) for name, t in times.items()}
    out["rounds"] = times
    if verl_cls is not None:
        ratios = [a / b for a, b in zip(times["verl"], times["fused"], strict=True)]
        out["verl_over_fused"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speed-shape", default="4096,256,65536", help="N,d,V ('' to skip)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    verl_cls = load_verl_fused()

    rows = accuracy(args.cases, args.seed, verl_cls)
    names = ["fused", "full_logits"] + (["verl"] if verl_cls is not None else [])
    print(f"fp32 error against fp64, max over tokens (verl {_verl_version()}, torch {torch.__version__})")
    header = "| N | d | V | T | " + " | ".join(f"{n} H err" for n in names) + " | fused/verl H |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for row in rows:
        ratio = row["fused_entropy_err"] / row["verl_entropy_err"] if verl_cls is not None else float("nan")
        errs = " | ".join(f"{row[f'{n}_entropy_err']:.2e}" for n in names)
        print(f"| {row['N']} | {row['d']} | {row['V']} | {row['T']} | {errs} | {ratio:.2f} |")

    timing: dict[str, Any] = {}
    if args.speed_shape:
        shape = tuple(int(x) for x in args.speed_shape.split(","))
        assert len(shape) == 3, "--speed-shape N,d,V"
        timing = speed(shape, args.repeats, verl_cls)  # type: ignore[arg-type]
        print(
            f"\nforward+backward seconds at N,d,V = {args.speed_shape}, fp32, {args.threads} threads "
            f"(median of {args.repeats} interleaved rounds after a warm-up each):"
        )
        for name in ("fused", "verl"):
            if name in timing:
                print(f"  {name:6s} {timing[name]:7.2f} s")
        if "verl" in timing:
            r = timing["verl_over_fused"]
            print(f"  verl / fused = {r['median']:.2f} (per round {r['min']:.2f}–{r['max']:.2f})")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "conditions": {
                    "torch": torch.__version__,
                    "verl": _verl_version(),
                    "threads": args.threads,
                    "machine": platform.machine(),
                    "loadavg_at_end": list(__import__("os").getloadavg()),
                },
                "accuracy": rows,
                "speed_shape": args.speed_shape,
                "speed_seconds": timing,
            },
            indent=1,
        )
    )
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
