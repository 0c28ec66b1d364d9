"""Launching the 2-process test scripts in tests/mp_scripts/ (gloo on CPU): a free port, and one run
of a script that starts its own second rank, killed as a whole group if it outlives its timeout."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_or_kill_group(proc: subprocess.Popen[str], timeout_s: float, what: str) -> tuple[str, str]:
    """``proc``'s (stdout, stderr) when it ends within ``timeout_s``; else its whole process group (it was
    started in a session of its own, with the ranks it launched) is killed and the test fails."""
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{what} timed out after {timeout_s} s:\n{(out or '')[-4000:]}{(err or '')[-3000:]}")
    return out or "", err or ""


#: what a rendezvous says when another process took its port between free_port() and the bind
_PORT_TAKEN = ("Address already in use", "EADDRINUSE")


def run_two_rank_script(script: Path, out: Path, timeout_s: float, what: str = "2-process run") -> str:
    """Run ``python script out`` (rank 0, which launches rank 1) in ``out``; return its log.

    Fails the test on a non-zero exit or after ``timeout_s`` (then rank 0 and the rank it launched are
    both killed: the run has its own session). A run whose port was taken between :func:`free_port`
    and its bind (a race with any other process, e.g. a second pytest worker) is started once more on
    another port; any other failure fails at once."""
    for attempt in range(2):
        env = dict(
            os.environ,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(free_port()),
            OMP_NUM_THREADS="1",
            PYTHONUNBUFFERED="1",
        )
        for var in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK"):  # never inherit a launcher's rank
            env.pop(var, None)
        proc = subprocess.Popen(
            [sys.executable, str(script), str(out)],
            env=env,
            cwd=out,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        log, _ = _wait_or_kill_group(proc, timeout_s, what)
        if proc.returncode != 0 and attempt == 0 and any(s in log for s in _PORT_TAKEN):
            continue
        assert proc.returncode == 0, f"{what} failed (rc={proc.returncode}):\n{log[-4000:]}"
        return log
    raise AssertionError("unreachable")  # pragma: no cover


def run_train_cli(run_dir: Path, overrides: list[str], timeout_s: float) -> None:
    """``entropyctl train --out run_dir --threads 1 --set ...`` as a user types it (Lightning re-launches
    the console script for each rank); fails the test on a non-zero exit, with the output's tail. Past
    ``timeout_s`` the whole process group is killed (a hung rank the launcher started included: killing
    the launcher alone left it running, deaf to SIGTERM in a collective)."""
    script = Path(sys.executable).parent / "entropyctl"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "entropyctl.cli"]
    args = [*command, "train", "--out", str(run_dir), "--threads", "1"]
    for override in overrides:
        args += ["--set", override]
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "ENTROPYCTL_RUN_DIR", "WORLD_SIZE")}
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    out, err = _wait_or_kill_group(proc, timeout_s, "entropyctl train")
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
