"""Benchmark: memory and time of the entropy/log-prob path, forward + backward.

Modes (each (mode, N, V, dtype) runs in its own subprocess, so peak memory is that mode's alone; every
mode gets the same inputs and the same policy loss on its per-token values):

  reference             full logits h·Wᵀ, log_softmax in fp32 (entropyctl.ops.token_logprob_entropy),
                        then the policy loss on the per-token values
  chunked_after_logits  logits first, then chunks: the full logits [N, V] exist (one matmul, kept for
                        backward), log-softmax / entropy computed over token chunks with activation
                        checkpointing per chunk (so only the logits and their gradient are [N, V]) — the
                        path of a trainer that materialises the logits (TRL without its fused LM head)
  trl_fused             TRL's fused LM head kernel (``trl.kernels.ChunkedLogProbFunction``, what
                        ``add_fused_lm_head`` runs in GRPO): [4096-token × vocab-tile] tiles folded into
                        online log-sum-exp statistics, recomputed in backward; vocab tile
                        ``--trl-vocab-tile`` (default 32768, TRL's own); needs ``trl`` installed
  fused                 entropyctl.ops.fused_logprob_entropy (recomputes chunk logits in backward)
                        + the policy loss on its outputs
  fused_loss            entropyctl.ops.fused_policy_loss (gradient computed in forward, no recompute)

Memory: on CPU the rise of the process's peak RSS (VmHWM, reset through /proc/self/clear_refs)
over the RSS after allocating the inputs, with MALLOC_MMAP_THRESHOLD_=1048576 so that large
buffers go back to the OS when freed; on CUDA torch.cuda.max_memory_allocated minus the inputs.
Time: median over repeats of one forward+backward (the first, unmeasured run is the warm-up and
the memory measurement). "×mm" is time ÷ the time of the three bare matmuls h·Wᵀ, dz·W, dzᵀ·h
(in the input dtype, over the same token chunks) measured in the same subprocess: the distance to
the compute limit of this machine (a fused path that recomputes logits does 4 such matmuls).

Usage:
  python benchmarks/entropy_path.py [--quick] [--repeats 3] [--out benchmarks/results/entropy_path_cpu.json]
  python benchmarks/entropy_path.py --hidden 256 --configs 1024:16384:fp32 \
      --out benchmarks/results/entropy_path_trl_cpu.json        (TRL's fused head beside ours)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODES = ("reference", "chunked_after_logits", "trl_fused", "fused", "fused_loss")
#: TRL's vocabulary tile in ``add_fused_lm_head`` (trl/trainer/utils.py, _CHUNKED_LOGPROB_CHUNK_SIZE)
TRL_VOCAB_TILE = 32768
#: TRL's token tile (trl/kernels/chunked_logprob.py, TOKEN_CHUNK_SIZE)
TRL_TOKEN_TILE = 4096
HIDDEN = 896
GIB = 1024**3


# ---------------------------------------------------------------- memory estimates (parent side)


def estimate_peak_bytes(
    mode: str, n: int, v: int, d: int, dtype: str, chunk: int, trl_tile: int = TRL_VOCAB_TILE
) -> float:
    """Rough peak-memory estimate used only to skip what cannot fit (measured numbers are reported)."""
    s = 2 if dtype == "bf16" else 4
    nv = n * v
    cv = min(chunk, n) * v
    if mode == "reference":
        # logits (input dtype) + fp32 copy, log_softmax, p, clamped log p, p·log p, and in backward
        # about two more fp32 [N, V] gradients alive at once.
        return nv * (s + (4 if s == 2 else 0) + 6 * 4)
    if mode == "chunked_after_logits":
        # logits + their gradient [N, V] in the input dtype, plus one chunk's fp32 work (×8 buffers).
        return 2 * nv * s + 8 * cv * 4
    if mode == "trl_fused":
        # one [token tile, vocab tile] buffer in the input dtype and its fp32 work, in forward and backward,
        # plus fp32 gradient accumulators for W and h.
        tile = min(n, TRL_TOKEN_TILE) * min(trl_tile, v)
        return tile * (s + 3 * 4) + v * d * 4 + n * d * 4
    # fused paths: ~3 fp32 [chunk, V] buffers + an fp32 dW accumulator + dh.
    return 3 * cv * 4 + v * d * 4 + n * d * s


# ---------------------------------------------------------------- child: one measurement


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)
        return True
    except OSError:
        return False


def _setup(cfg: dict[str, Any]) -> dict[str, Any]:
    """The inputs every mode gets (the same for a given N, V, d, dtype: seeded), on cfg's device."""
    import torch

    torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[cfg["dtype"]]
    n, v, d = cfg["n"], cfg["v"], cfg["d"]
    g = torch.Generator(device="cpu").manual_seed(0)

    def make(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    hidden = make(n, d).requires_grad_()
    weight = make(v, d, scale=d**-0.5).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g).to(device)
    old = (-torch.rand(n, generator=g) * 5).to(device)
    adv = torch.randn(n, generator=g).to(device)
    coef = torch.full((n,), 0.01, device=device)
    mask = (torch.rand(n, generator=g) > 0.1).float().to(device)
    return {
        "hidden": hidden,
        "weight": weight,
        "targets": targets,
        "loss_args": (old, adv, coef, mask, 0.2, 0.28),
        "cuda": device.type == "cuda",
    }


def _step(mode: str, cfg: dict[str, Any], x: dict[str, Any]) -> Callable[[], None]:
    """One forward + backward of ``mode`` on the inputs ``x`` (gradients cleared after it)."""
    import torch

    from entropyctl.ops.entropy import fused_logprob_entropy, token_logprob_entropy
    from entropyctl.ops.losses import fused_policy_loss, policy_loss

    hidden, weight, targets, loss_args = x["hidden"], x["weight"], x["targets"], x["loss_args"]
    n, chunk = cfg["n"], cfg["chunk"]
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")

    def step() -> None:
        if mode == "reference":
            lp, ent = token_logprob_entropy(hidden @ weight.t(), targets)
            loss = policy_loss(lp, ent, *loss_args).loss
        elif mode == "chunked_after_logits":
            from torch.utils.checkpoint import checkpoint

            logits = hidden @ weight.t()
            parts = [
                checkpoint(
                    token_logprob_entropy, logits[s : s + chunk], targets[s : s + chunk], use_reentrant=False
                )
                for s in range(0, n, chunk)
            ]
            lp = torch.cat([p[0] for p in parts])
            ent = torch.cat([p[1] for p in parts])
            loss = policy_loss(lp, ent, *loss_args).loss
        elif mode == "trl_fused":
            from trl.kernels import ChunkedLogProbFunction

            # (hidden, weight, bias, targets, temperature, vocab tile, softcapping, logit scale, outputs)
            lp, ent, *_ = ChunkedLogProbFunction.apply(
                hidden, weight, None, targets, 1.0, cfg["trl_tile"], None, 1.0, ("entropy",)
            )
            loss = policy_loss(lp, ent, *loss_args).loss
        elif mode == "fused":
            lp, ent = fused_logprob_entropy(hidden, weight, targets, chunk_size=chunk)
            loss = policy_loss(lp, ent, *loss_args).loss
        else:  # fused_loss
            loss = fused_policy_loss(hidden, weight, targets, *loss_args, chunk_size=chunk).loss
        loss.backward()
        hidden.grad = None
        weight.grad = None

    return step


def _timed(fn: Callable[[], None], cuda: bool) -> float:
    import torch

    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _bare_matmuls(cfg: dict[str, Any], x: dict[str, Any]) -> float:
    """The three bare matmuls of forward + backward (h·Wᵀ, dz·W, dzᵀ·h) over the same token chunks."""
    import torch

    hidden, weight, chunk = x["hidden"], x["weight"], cfg["chunk"]
    total = 0.0
    with torch.no_grad():
        for s in range(0, cfg["n"], chunk):
            h = hidden[s : s + chunk].detach()

            def mm(h: torch.Tensor = h) -> None:
                z = h @ weight.t()
                dz = z  # stands in for dlogits: same shape and dtype
                dh = dz @ weight
                dw = dz.t() @ h
                del z, dz, dh, dw

            total += _timed(mm, x["cuda"])
    return total


def run_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """One mode in a process of its own: its peak memory (the first run, also the warm-up), and, with
    ``repeats`` > 0, its times run after run (sequential: compare modes with the interleaved rounds)."""
    import torch

    x = _setup(cfg)
    cuda, mode = x["cuda"], cfg["mode"]
    step = _step(mode, cfg, x)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_kib("VmRSS") * 1024
        reset_ok = _reset_peak_rss()
    first = _timed(step, cuda)
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _rss_kib("VmHWM") * 1024 - base
        if not reset_ok:
            peak = float("nan")
    times = [_timed(step, cuda) for _ in range(cfg["repeats"])]
    t_mm = min(_bare_matmuls(cfg, x) for _ in range(max(1, min(cfg["repeats"], 2))))
    # repeats = 0: the one measured run is also the timing.
    t_med = statistics.median(times) if times else first
    return {
        **cfg,
        "status": "ok",
        "peak_bytes": peak,
        "time_s": t_med,
        "times_s": times,
        "time_includes_warmup": not times,
        "first_run_s": first,
        "matmul_s": t_mm,
        "ratio_to_matmul": t_med / t_mm,
        "torch": torch.__version__,
        "trl": _trl_version() if mode == "trl_fused" else None,
    }


def run_interleaved(cfg: dict[str, Any]) -> dict[str, Any]:
    """Every mode of ``cfg["modes"]`` in one process on the same inputs, in ``cfg["rounds"]`` rounds
    after one warm-up each: each round runs every mode once, and the bare matmuls, in an order rotated
    by one per round, so a slow minute of a shared machine falls on every mode alike; a mode's time
    ÷ the reference's is taken within each round."""
    x = _setup(cfg)
    steps = {mode: _step(mode, cfg, x) for mode in cfg["modes"]}
    steps["matmuls"] = lambda: None  # placeholder: timed by _bare_matmuls below
    for mode in cfg["modes"]:
        _timed(steps[mode], x["cuda"])  # warm-up
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    orders = []
    for r in range(cfg["rounds"]):
        order = names[r % len(names) :] + names[: r % len(names)]
        orders.append(order)
        for name in order:
            t = _bare_matmuls(cfg, x) if name == "matmuls" else _timed(steps[name], x["cuda"])
            times[name].append(t)
    return {"n": cfg["n"], "v": cfg["v"], "dtype": cfg["dtype"], "modes": cfg["modes"], "rounds": cfg["rounds"],
            "times_s": times, "orders": orders}  # fmt: skip


def _trl_version() -> str | None:
    try:
        import trl

        return str(trl.__version__)
    except ImportError:
        return None


# ---------------------------------------------------------------- parent: grid, table, JSON


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def grid(quick: bool) -> list[tuple[int, int, str]]:
    if quick:
        return [(512, 8000, "fp32"), (512, 8000, "bf16")]
    return [(n, v, dt) for v in (32000, 151936) for n in (2048, 8192) for dt in ("bf16", "fp32")]


def fmt_gb(b: float) -> str:
    return f"{b / GIB:.2f}"


ACCURACY_SHAPES = [(81, 72, 4826, 1.31), (256, 64, 32000, 0.5), (256, 64, 32000, 0.8), (256, 64, 32000, 1.0),
                   (256, 64, 32000, 1.5), (128, 128, 65536, 1.2), (512, 256, 8192, 0.7)]  # fmt: skip


def run_accuracy(args: argparse.Namespace) -> int:
    """Max |error| against fp64 of fp32 entropy and log-probs, per path, on the same inputs.

    Inputs are fp32 hidden [N, d] ~ N(0, 1) and weight [V, d] ~ N(0, 4/d) (logit std ≈ 2); the fp64
    reference runs the full-logits formula on the same fp32 values upcast. ``eps·|z|max`` is the scale of
    the unavoidable error (rounding of the fp32 logits themselves).
    """
    import torch

    from entropyctl.ops.entropy import fused_logprob_entropy, token_logprob_entropy
    from entropyctl.ops.losses import fused_policy_loss

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    rows = []
    for seed, (n, d, v, t) in enumerate(ACCURACY_SHAPES):
        g = torch.Generator().manual_seed(seed)
        hidden = torch.randn(n, d, generator=g)
        weight = torch.randn(v, d, generator=g) * (2.0 / math.sqrt(d))
        targets = torch.randint(0, v, (n,), generator=g)
        lp64, h64 = token_logprob_entropy(hidden.double() @ weight.double().T, targets, t)
        with torch.no_grad():
            lp_f, h_f = fused_logprob_entropy(hidden, weight, targets, temperature=t)
            lp_r, h_r = token_logprob_entropy(hidden @ weight.T, targets, t)
            zeros = torch.zeros(n)
            loss = fused_policy_loss(hidden, weight, targets, lp_r, zeros, 0.01, torch.ones(n), 0.2, 0.28, t)

        def err(x: torch.Tensor, ref: torch.Tensor) -> float:
            return float((x.double() - ref).abs().max())

        zmax = float((hidden @ weight.T).abs().max()) / t
        rows.append(
            {
                "N": n, "d": d, "V": v, "T": t, "mean_entropy": float(h64.mean()),
                "eps_zmax": torch.finfo(torch.float32).eps * zmax,
                "entropy_fused": err(h_f, h64), "entropy_reference": err(h_r, h64),
                "entropy_policy_loss": err(loss.entropy, h64),
                "logprob_fused": err(lp_f, lp64), "logprob_reference": err(lp_r, lp64),
            }
        )  # fmt: skip
    head = "| N | d | V | T | H (mean) | ε·max(abs z) | entropy: fused | reference (full logits) | fused_policy_loss | fused / reference | log-prob: fused | reference |"
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['N']} | {r['d']} | {r['V']} | {r['T']} | {r['mean_entropy']:.2f} | {r['eps_zmax']:.1e} | "
            f"{r['entropy_fused']:.1e} | {r['entropy_reference']:.1e} | {r['entropy_policy_loss']:.1e} | "
            f"{r['entropy_fused'] / r['entropy_reference']:.2f} | {r['logprob_fused']:.1e} | {r['logprob_reference']:.1e} |"
        )
    print("\n".join(lines))
    out = Path(args.out or "benchmarks/results/entropy_accuracy.json")
    conditions = {"torch": torch.__version__, "cpu": cpu_name(), "threads": torch.get_num_threads(), "dtype": "fp32",
                  "reference": "fp64 full logits on the same fp32 inputs", "metric": "max |error| over tokens"}  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"conditions": conditions, "results": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small subset (N=512, V=8000) to check the script")
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved timing: rounds of every mode in one process per config (0: none)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=0,
        help="sequential timing: repeats of each mode in its own process after its memory run (default 0)",
    )
    ap.add_argument(
        "--big-repeats",
        type=int,
        default=0,
        help="--repeats for configs with N·V > 5e8 (minutes each); 0 = time the single warm-up/memory run",
    )
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=HIDDEN, help=f"hidden size d (default {HIDDEN})")
    ap.add_argument(
        "--trl-vocab-tile",
        type=int,
        default=TRL_VOCAB_TILE,
        help=f"vocabulary tile of the trl_fused mode (default {TRL_VOCAB_TILE}, TRL's add_fused_lm_head)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all CPUs)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument(
        "--budget-gb", type=float, default=12.0, help="skip configs whose estimated peak exceeds this"
    )
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument(
        "--configs",
        default=None,
        help="explicit N:V:dtype list, e.g. 2048:151936:bf16,8192:151936:bf16 (default: the full grid)",
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help="keep the finished results already in --out and run only the missing (mode, N, V, dtype)",
    )
    ap.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="wall-clock budget: configs not started by then are recorded as 'not run' (shared machines)",
    )
    ap.add_argument(
        "--out", default=None, help="JSON path (default benchmarks/results/entropy_path_<device>.json)"
    )
    ap.add_argument("--render", default=None, help="print the markdown table of an existing JSON and exit")
    ap.add_argument(
        "--accuracy",
        action="store_true",
        help="instead of timing: fp32 entropy / log-prob error against fp64 on random shapes and temperatures "
        "(fused, full-logits reference and fused_policy_loss paths); table + JSON (entropy_accuracy.json)",
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.accuracy:
        return run_accuracy(args)

    if args.render is not None:
        data = json.loads(Path(args.render).read_text())
        print(render_markdown(data["conditions"], data["results"], data.get("interleaved")))
        return 0
    if args.child is not None:
        cfg = json.loads(args.child)
        result = run_interleaved(cfg) if "modes" in cfg else run_child(cfg)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    import torch

    threads = args.threads or os.cpu_count() or 1
    out = Path(args.out or f"benchmarks/results/entropy_path_{args.device}.json")
    modes = [m for m in args.modes.split(",") if m]
    conditions = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(0),
        "hidden_size": args.hidden,
        "chunk_size": args.chunk_size,
        "trl_vocab_tile": args.trl_vocab_tile,
        "trl_token_tile": TRL_TOKEN_TILE,
        "trl": _trl_version(),
        "budget_gb": args.budget_gb,
        "repeats": args.repeats,
        "big_repeats": args.big_repeats,
        "rounds": args.rounds,
        "memory": "RSS rise (VmHWM - RSS after inputs), MALLOC_MMAP_THRESHOLD_=1048576"
        if args.device == "cpu"
        else "torch.cuda.max_memory_allocated - allocated after inputs",
        "loss": "policy_loss (clipped surrogate + entropy term, token-mean), eps 0.2/0.28",
    }
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576", OMP_NUM_THREADS=str(threads))
    results: list[dict[str, Any]] = []
    interleaved: list[dict[str, Any]] = []
    if args.resume and out.exists():
        # Every earlier record is kept (also those of configs outside --configs); a skipped or
        # failed one is replaced below when its config runs again.
        earlier = json.loads(out.read_text())
        results, interleaved = earlier["results"], earlier.get("interleaved", [])
    done = {_key(r) for r in results if r.get("status") == "ok"}
    if args.configs:
        configs = [(int(n), int(v), dt) for n, v, dt in (c.split(":") for c in args.configs.split(","))]
    else:
        configs = grid(args.quick)
    started = time.monotonic()
    for n, v, dt in configs:
        for mode in modes:
            if (mode, n, v, dt) in done:
                continue
            cfg = {
                "mode": mode,
                "n": n,
                "v": v,
                "d": args.hidden,
                "dtype": dt,
                "chunk": args.chunk_size,
                "trl_tile": args.trl_vocab_tile,
                "threads": threads,
                "device": args.device,
                "repeats": args.big_repeats if n * v > 5e8 else args.repeats,
            }
            est = estimate_peak_bytes(mode, n, v, args.hidden, dt, args.chunk_size, args.trl_vocab_tile)
            cfg["estimated_peak_bytes"] = est
            if est > args.budget_gb * GIB:
                res = {
                    **cfg,
                    "status": f"skipped: estimated peak {fmt_gb(est)} GB > budget {args.budget_gb:g} GB",
                }
            elif args.max_minutes is not None and time.monotonic() - started > 60 * args.max_minutes:
                res = {**cfg, "status": f"not run: wall-clock budget of {args.max_minutes:g} min used up"}
            else:
                got, error = _run_child(cfg, env)
                res = got if got is not None else {**cfg, "status": error}
            results = [r for r in results if _key(r) != _key(res)] + [res]
            print(_row(res), flush=True)
            # Written after every config, so an interrupted grid still leaves its numbers.
            _write(out, conditions, results, interleaved)
        ran = [m for m in modes if any(_key(r) == (m, n, v, dt) and r.get("status") == "ok" for r in results)]
        if args.rounds > 0 and len(ran) > 1 and not _interleaved_of(interleaved, n, v, dt, ran):
            if args.max_minutes is not None and time.monotonic() - started > 60 * args.max_minutes:
                continue
            record, error = _run_child({**cfg, "modes": ran, "rounds": args.rounds}, env)
            if record is None:
                print(f"interleaved N={n} V={v} {dt}: {error}")
                continue
            interleaved = [i for i in interleaved if (i["n"], i["v"], i["dtype"]) != (n, v, dt)] + [record]
            print(_interleaved_row(record), flush=True)
            _write(out, conditions, results, interleaved)
    print()
    print(render_markdown(conditions, results, interleaved))
    print(f"\nwrote {out}")
    return 0


def _run_child(cfg: dict[str, Any], env: dict[str, str]) -> tuple[dict[str, Any] | None, str]:
    """This script on ``cfg`` in a subprocess (``--child``): its RESULT record, or None and why not."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(cfg)], env=env, capture_output=True, text=True
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1][len("RESULT ") :]), ""
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return None, f"failed (rc {proc.returncode}): {' | '.join(tail)}"


def _key(r: dict[str, Any]) -> tuple[str, int, int, str]:
    return (r["mode"], r["n"], r["v"], r["dtype"])


def _write(out: Path, conditions: dict[str, Any], results: list[Any], interleaved: list[Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {"conditions": conditions, "results": results, "interleaved": interleaved}
    out.write_text(json.dumps(data, indent=2) + "\n")


def _interleaved_of(
    interleaved: list[dict[str, Any]], n: int, v: int, dt: str, modes: list[str] | None = None
) -> dict[str, Any] | None:
    """The interleaved record of (N, V, dtype) (holding every mode of ``modes``), or None."""
    for rec in interleaved:
        if (rec["n"], rec["v"], rec["dtype"]) == (n, v, dt) and set(modes or ()) <= set(rec["modes"]):
            return rec
    return None


def round_ratios(rec: dict[str, Any], mode: str, base: str = "reference") -> list[float]:
    """``mode``'s time ÷ ``base``'s within each round of an interleaved record."""
    return [a / b for a, b in zip(rec["times_s"][mode], rec["times_s"][base], strict=True)]


def _interleaved_row(rec: dict[str, Any]) -> str:
    med = {m: statistics.median(t) for m, t in rec["times_s"].items()}
    parts = [f"{m} {med[m]:.2f} s" for m in rec["modes"]]
    if "reference" in rec["modes"]:
        parts += [
            f"{m}/ref {statistics.median(round_ratios(rec, m)):.2f}" for m in rec["modes"] if m != "reference"
        ]
    return f"interleaved N={rec['n']} V={rec['v']} {rec['dtype']} ({rec['rounds']} rounds): " + ", ".join(
        parts
    )


def _row(r: dict[str, Any]) -> str:
    head = f"{r['mode']:<21} N={r['n']:<5} V={r['v']:<6} {r['dtype']:<4}"
    if r.get("status") != "ok":
        return f"{head} {r['status']}"
    return (
        f"{head} peak {fmt_gb(r['peak_bytes'])} GB  time {r['time_s']:.2f} s  "
        f"matmuls {r['matmul_s']:.2f} s  x{r['ratio_to_matmul']:.2f}"
    )


def _time_cells(
    r: dict[str, Any], base: dict[str, Any] | None, rec: dict[str, Any] | None
) -> tuple[str, str, str]:
    """(time s, ×mm, time ÷ ref time) of one mode: from the interleaved rounds where ``rec`` holds them
    (median over rounds; the ratio the median of the per-round ratios, their range in brackets), else
    from its own process's runs (sequential)."""
    if rec is not None and r["mode"] in rec["modes"]:
        t = statistics.median(rec["times_s"][r["mode"]])
        mm = statistics.median(rec["times_s"]["matmuls"])
        ratio = "—"
        if "reference" in rec["modes"]:
            rs = round_ratios(rec, r["mode"])
            ratio = f"{statistics.median(rs):.2f} ({min(rs):.2f}–{max(rs):.2f})"
        return f"{t:.2f}", f"{t / mm:.2f}", ratio
    star = "*" if r.get("time_includes_warmup") else ""
    ratio = f"{r['time_s'] / base['time_s']:.2f} (seq.)" if base else "—"
    return f"{r['time_s']:.2f}{star} (seq.)", f"{r['ratio_to_matmul']:.2f}", ratio


def render_markdown(
    conditions: dict[str, Any], results: list[dict[str, Any]], interleaved: list[dict[str, Any]] | None = None
) -> str:
    """Markdown table; ratios are relative to `reference` of the same (N, V, dtype) when it ran. Times are
    the interleaved rounds' where a config has them, else marked "(seq.)" (each mode in its own process,
    one after another: not side by side)."""
    interleaved = interleaved or []
    rounds = conditions.get("rounds", 0)
    lines = [
        f"Conditions: torch {conditions['torch']}, Python {conditions['python']}, {conditions['device']} "
        f"({conditions['cpu']}, {conditions['cpu_count']} CPUs, {conditions['threads']} threads), d = "
        f"{conditions['hidden_size']}, chunk {conditions['chunk_size']}"
        + (
            f" (trl_fused: TRL {conditions['trl']}, tiles {conditions['trl_token_tile']} tokens × "
            f"{conditions['trl_vocab_tile']} vocab)"
            if conditions.get("trl_vocab_tile")
            else ""
        )
        + f", memory = {conditions['memory']} (each mode in its own process), "
        f"skip budget {conditions['budget_gb']:g} GB (estimated); time: "
        + (
            f"median over {rounds} interleaved rounds of forward+backward, every mode in one process "
            "(the ratio: the median of the per-round ratios, their range in brackets)"
            if rounds
            else f"median forward+backward, repeats {conditions['repeats']} "
            f"({conditions['big_repeats']} for N·V > 5e8) in each mode's own process"
        )
        + ".",
        "",
        "| N | V | dtype | mode | peak GB | time s | ×mm | peak ÷ ref peak | time ÷ ref time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ref = {
        (r["n"], r["v"], r["dtype"]): r
        for r in results
        if r["mode"] == "reference" and r.get("status") == "ok"
    }

    def order(r: dict[str, Any]) -> tuple[int, int, str, int]:
        return (r["v"], r["n"], r["dtype"], MODES.index(r["mode"]) if r["mode"] in MODES else 99)

    starred = False  # a time shown is a single warm-up run
    for r in sorted(results, key=order):
        key = (r["n"], r["v"], r["dtype"])
        if r.get("status") != "ok":
            lines.append(
                f"| {r['n']} | {r['v']} | {r['dtype']} | {r['mode']} | — | — | — | — | {r['status']} |"
            )
            continue
        base = ref.get(key)
        mem_ratio = f"{r['peak_bytes'] / base['peak_bytes']:.3f}" if base and base["peak_bytes"] > 0 else "—"
        t, mm, time_ratio = _time_cells(r, base, _interleaved_of(interleaved, *key))
        starred |= "*" in t
        lines.append(
            f"| {r['n']} | {r['v']} | {r['dtype']} | {r['mode']} | {fmt_gb(r['peak_bytes'])} | "
            f"{t} | {mm} | {mem_ratio} | {time_ratio} |"
        )
    if starred:
        lines += ["", "\\* one run only (the warm-up/memory run), not a median: `--big-repeats 0`."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
