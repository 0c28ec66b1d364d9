"""Benchmark: peak memory and time of a training step's loss with a token-level controller.

Each mode runs in its own subprocess (peak memory is that mode's alone), on the same inputs:

  fused_loss        entropyctl.ops.fused_policy_loss, no token action (the baseline)
  fused_loss_token  what the trainer does for a token-level controller on the fused path: the no-grad
                    fused log-prob/entropy pass (token statistics, [N] each), the controller's token
                    action (``--controller``, one process: ``LOCAL``), then fused_policy_loss with it
  reference_token   full logits [N, V] (token_logprob_entropy), the same token action, policy_loss:
                    what a path that materialises the logits costs (skipped above ``--reference-max-nv``)

Memory: the rise of peak RSS (VmHWM, reset through /proc/self/clear_refs) over the RSS after the
inputs are allocated, MALLOC_MMAP_THRESHOLD_=1048576 (the machinery of benchmarks/entropy_path.py).
Time: one forward+backward, the same run as the memory reading (a shared machine: no repeats).
A row whose peak stays far below N·V·4 bytes holds no [N, V] fp32 tensor.

Usage:
  python benchmarks/token_level_memory.py --configs 8192:32000 8192:151936 --hidden 256 \
      --out benchmarks/results/token_level_memory_cpu.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MODES = ("fused_loss", "fused_loss_token", "reference_token")
GIB = 1024**3


def _entropy_path_module() -> Any:
    path = Path(__file__).with_name("entropy_path.py")
    spec = importlib.util.spec_from_file_location("entropy_path_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_child(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch

    from entropyctl import GroupOutcome, create_controller
    from entropyctl.controllers.base import TokenStatistics
    from entropyctl.ops.entropy import fused_logprob_entropy, token_logprob_entropy
    from entropyctl.ops.losses import fused_policy_loss, policy_loss
    from entropyctl.ops.token_selection import LOCAL

    bench = _entropy_path_module()
    torch.set_num_threads(cfg["threads"])
    n, v, d, chunk, mode = cfg["n"], cfg["v"], cfg["d"], cfg["chunk"], cfg["mode"]
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, d, generator=g).requires_grad_()
    weight = (torch.randn(v, d, generator=g) * d**-0.5).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    old = -torch.rand(n, generator=g) * 5
    adv = torch.randn(n, generator=g)
    coef = torch.zeros(n)
    mask = (torch.rand(n, generator=g) > 0.1).float()
    controller = create_controller(cfg["controller"])
    plan = controller.plan(GroupOutcome(accuracy=torch.zeros(1), group_size=1, step=1))
    low, high = plan.clip_low, plan.clip_high

    def action_of(lp: torch.Tensor, ent: torch.Tensor) -> Any:
        stats = TokenStatistics(lp.detach(), old, ent.detach(), adv, mask, step=1)
        return controller.token_action(stats, LOCAL)

    def step() -> dict[str, Any]:
        info: dict[str, Any] = {}
        if mode == "fused_loss":
            loss = fused_policy_loss(
                hidden, weight, targets, old, adv, coef, mask, low, high, chunk_size=chunk
            ).loss
        elif mode == "fused_loss_token":
            t0 = time.perf_counter()
            with torch.no_grad():
                lp, ent = fused_logprob_entropy(hidden, weight, targets, chunk_size=chunk)
            action = action_of(lp, ent)
            info["stats_and_selection_s"] = time.perf_counter() - t0
            loss = fused_policy_loss(
                hidden,
                weight,
                targets,
                old,
                adv,
                coef,
                mask,
                low,
                high,
                chunk_size=chunk,
                token_action=action,
            ).loss
        elif mode == "reference_token":
            lp, ent = token_logprob_entropy(hidden @ weight.t(), targets)
            action = action_of(lp, ent)
            loss = policy_loss(lp, ent, old, adv, coef, mask, low, high, token_action=action).loss
        else:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        loss.backward()
        return info

    base = bench._rss_kib("VmRSS") * 1024
    reset_ok = bench._reset_peak_rss()
    t0 = time.perf_counter()
    info = step()
    elapsed = time.perf_counter() - t0
    peak = bench._rss_kib("VmHWM") * 1024 - base if reset_ok else float("nan")
    return {**cfg, **info, "status": "ok", "peak_bytes": peak, "time_s": elapsed, "torch": torch.__version__}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["2048:32000"], help="N:V pairs")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--chunk-size", type=int, default=256)
    ap.add_argument("--controller", default="kl_cov", help="the token-level controller (a registered name)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--reference-max-nv", type=float, default=4e8, help="skip reference_token above N·V")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return 0
    threads = args.threads or os.cpu_count() or 1
    results = []
    for spec in args.configs:
        n, v = (int(x) for x in spec.split(":"))
        for mode in args.modes.split(","):
            cfg = {"n": n, "v": v, "d": args.hidden, "chunk": args.chunk_size, "mode": mode}
            cfg.update(threads=threads, controller=args.controller)
            if mode == "reference_token" and n * v > args.reference_max_nv:
                results.append({**cfg, "status": "skipped", "why": f"N·V > {args.reference_max_nv:g}"})
                continue
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576")
            proc = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(cfg)],
                capture_output=True,
                text=True,
                env=env,
            )
            if proc.returncode != 0:
                results.append({**cfg, "status": "failed", "why": proc.stderr[-500:]})
            else:
                results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(_row(results[-1]), flush=True)
    conditions = {
        "cpu": platform.processor() or platform.machine(),
        "threads": threads,
        "dtype": "fp32",
        "load_avg_1m": os.getloadavg()[0],
        "python": platform.python_version(),
    }
    print(render(conditions, results))
    if args.out:
        Path(args.out).write_text(json.dumps({"conditions": conditions, "results": results}, indent=1) + "\n")
    return 0


def _row(r: dict[str, Any]) -> str:
    nv_gib = r["n"] * r["v"] * 4 / GIB
    if r["status"] != "ok":
        return f"| {r['n']} | {r['v']} | {r['mode']} | {r['status']}: {r.get('why', '')[:60]} | | {nv_gib:.2f} | |"
    stats = r.get("stats_and_selection_s")
    return (
        f"| {r['n']} | {r['v']} | {r['mode']} | {r['peak_bytes'] / GIB:.2f} | {r['time_s']:.1f} | "
        f"{nv_gib:.2f} | {'' if stats is None else f'{stats:.1f}'} |"
    )


def render(conditions: dict[str, Any], results: list[dict[str, Any]]) -> str:
    lines = [
        f"conditions: {json.dumps(conditions)}",
        "| N | V | mode | peak GiB | time s | N·V·4 GiB | stats pass + selection s |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [_row(r) for r in results]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
