"""The safety contract of a run directory: one run at a time, no silent overwrite, resume only into
the same run, honest status.

* :func:`prepare_run_dir` refuses a directory that already holds a run (:data:`RUN_FILES`) unless the
  caller resumes or overwrites; overwriting removes only :data:`RUN_FILES`, never other files.
* :class:`RunLock`: an exclusive ``fcntl.flock`` on ``<run dir>/run.lock`` for the run's lifetime. The
  file names the holder (pid, host, start time) so a second run fails at once saying who holds it. The
  kernel releases a flock when its process dies (kill -9 included), so a leftover file nobody holds is a
  stale lock: it is taken over and reported.
* :func:`run_fingerprint` / :func:`fingerprint_changes`: the resolved config (minus settings that change
  no result) and a hash of the data files, stored in every checkpoint, compared on resume.
* :class:`RunStatus`: ``summary.json`` written atomically (temp file + rename) with a heartbeat
  (pid, host, ``updated_at``) refreshed from a background thread while the run lives;
  :func:`read_run_state` tells a live run from a dead one.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import errno
import hashlib
import io
import json
import math
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from entropyctl.controllers.band import BandHealth, band_health
from entropyctl.validation import format_validation_error

__all__ = [
    "LEVEL_KINDS",
    "Summary",
    "coefficient_acted",
    "step_skipped",
    "column_level",
    "level_column",
    "pass_k",
    "pass_key",
    "read_summary",
    "read_band_health",
    "read_metrics",
    "float_or_nan",
    "CONTROLLER_PREFIX",
    "SHAPING_PREFIX",
    "MetricsWriter",
    "CompletionsWriter",
    "metric_columns",
    "RUN_FILES",
    "LOCK_FILE",
    "IGNORED_FOR_RESUME",
    "RunDirError",
    "RunLockedError",
    "ResumeMismatchError",
    "RunStopped",
    "RunLock",
    "RunStatus",
    "prepare_run_dir",
    "remove_stale_temp_files",
    "run_fingerprint",
    "config_fingerprint",
    "fingerprint_changes",
    "read_run_state",
    "write_json_atomic",
    "HEARTBEAT_S",
    "StopSignals",
    "existing_run_files",
]

#: What a run writes in its directory; ``--overwrite`` removes exactly these (and nothing else).
RUN_FILES = (
    "config.yaml",
    "metrics.csv",
    "summary.json",
    "checkpoints",
    "tensorboard",
    "ranks",
    "wandb",
    "completions.jsonl",
    "resumes.jsonl",
)
#: One line per resume of the run (its checkpoint, step, changes, when), appended before it trains.
RESUMES_FILE = "resumes.jsonl"
LOCK_FILE = "run.lock"
#: Seconds between heartbeats in ``summary.json`` while a run lives.
HEARTBEAT_S = 30.0
#: Config fields that change no result: a resume may change them freely (more steps, other threads...).
IGNORED_FOR_RESUME = (
    "output_dir",
    "run_name",
    "trainer.steps",
    "trainer.threads",
    "trainer.progress_bar",
    "trainer.log_every",
    "trainer.tensorboard",
    "trainer.wandb",
    "model.gradient_checkpointing",  # recomputes what it would have kept: the same numbers
    "algorithm.micro_batch_size",  # the same update up to float rounding (like trainer.threads): memory
    "algorithm.micro_batch_tokens",  # likewise
    "trainer.checkpoint_every",
    "trainer.keep_checkpoints",
    "trainer.save_last",
    "trainer.stop_grace_s",
    "trainer.completions_every",  # operational (which steps' rollouts are written out)
    "ablation",
)


_STEP_COUNT = (
    "Lightning counts the run in optimizer steps, ppo_epochs × mini_batches a step: a new count makes the "
    "resumed run the wrong length and moves its lr schedule"
)
#: Config fields a resume cannot change even with ``--allow-resume-changes``: why, per field.
FIXED_ON_RESUME = {
    "seed": "the checkpoint's prompt sampler draws the seed's stream; start another run for another seed",
    "algorithm.ppo_epochs": _STEP_COUNT,
    "algorithm.mini_batches": _STEP_COUNT,
}


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (it holds a run, or is locked)."""


class RunLockedError(RunDirError):
    """Another live process holds the run directory's lock."""


class ResumeMismatchError(RunDirError):
    """``--resume`` with a config or data set different from the checkpoint's."""


class RunStopped(BaseException):
    """Raised when a run stops on SIGTERM/SIGINT; ``exit_code`` is 128 + the signal number.

    A BaseException (like KeyboardInterrupt) so that no ``except Exception`` on the way swallows it.
    """

    def __init__(self, signum: int, *, abandoned: bool = False) -> None:
        self.signum = int(signum)
        self.abandoned = abandoned
        self.exit_code = 128 + self.signum
        how = "abandoned the step in progress" if abandoned else "stopped after the step in progress"
        super().__init__(f"received signal {self.signum}: {how}")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: Mapping[str, Any] | list[Any]) -> None:
    """Write JSON to ``path`` through a temp file + rename: a reader sees the old or the new file, never
    a truncated one."""

    def default(value: Any) -> Any:
        return value.item() if hasattr(value, "item") else str(value)

    text = json.dumps(data if isinstance(data, list) else dict(data), indent=2, default=default) + "\n"
    write_atomic(path, lambda f: f.write(text.encode()))


#: the name of :func:`write_atomic`'s hidden temp file beside ``name``, by the process ``pid`` writing it
_TEMP_NAME = ".{name}.{pid}.tmp"
#: those names, any process's (group 1: its pid), which :func:`remove_stale_temp_files` looks for
_TEMP_PATTERN = re.compile(r"^\..+\.(\d+)\.tmp$")


def write_atomic(path: str | Path, write: Callable[[Any], object]) -> None:
    """Write ``path`` whole or not at all: ``write`` fills a hidden temp file beside it (the same file
    system, so the rename is atomic), flushed to disk, then renamed over it. On any error (a full disk, a
    signal) the temp file is removed and the previous file, if any, stays as it was."""
    path = Path(path)
    tmp = path.with_name(_TEMP_NAME.format(name=path.name, pid=os.getpid()))
    try:
        with tmp.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def remove_stale_temp_files(run_dir: Path, log: Callable[[str], None] | None = None) -> list[Path]:
    """Remove the temp files :func:`write_atomic` left in ``run_dir`` and its ``checkpoints/`` when a
    process was killed mid-write (SIGKILL: no handler ran; for a checkpoint, the model's size each
    time). The caller holds the directory's :class:`RunLock`, so no writer of this run is alive. Returns
    the files removed, each named to ``log``."""
    removed = []
    for folder in (run_dir, run_dir / "checkpoints"):
        for path in folder.glob(".*.tmp") if folder.is_dir() else ():
            match = _TEMP_PATTERN.match(path.name)
            if match and int(match.group(1)) != os.getpid() and path.is_file():
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(path)
                    if log is not None:
                        log(f"[entropyctl] removed {path}, a write that an earlier process was killed in")
    return removed


# ------------------------------------------------------------------------------------------ the lock


def _holder_text(info: Mapping[str, Any]) -> str:
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {info.get('started', '?')}"


class RunLock:
    """Exclusive lock on ``<run_dir>/run.lock``, held until :meth:`release` (or the process dies).

    ``acquire`` fails at once (no waiting) with :class:`RunLockedError` naming the holder. ``stale``
    holds the previous holder's record when a lock left by a dead process was taken over.
    """

    def __init__(self, run_dir: str | Path, *, name: str = LOCK_FILE, user: str = "run") -> None:
        self.path = Path(run_dir) / name
        self.user = user  # who else may hold it, for the refusal: "another run is using this directory"
        self.stale: dict[str, Any] | None = None
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            info = self._read()
            raise RunLockedError(
                f"{self.path.parent}: another {self.user} is using this directory ({_holder_text(info)}); "
                "wait for it to end or use another --out"
            ) from None
        try:  # the file may have been unlinked since it was opened (a refused run removing its new folder)
            current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except OSError:
            current = False
        if not current:
            os.close(fd)
            raise RunLockedError(
                f"{self.path.parent}: another {self.user} was removing this directory as it was opened; "
                "run again"
            )
        previous = self._read_fd(fd)
        if previous:
            self.stale = previous  # a file left behind with nobody holding the lock: its process is gone
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        return self

    def _read(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.path.read_text() or "{}"))
        except (OSError, ValueError, TypeError):
            return {}

    @staticmethod
    def _read_fd(fd: int) -> dict[str, Any]:
        try:
            text = os.pread(fd, 4096, 0).decode()
            return dict(json.loads(text)) if text.strip() else {}
        except (OSError, ValueError, TypeError):
            return {"pid": "?", "host": "?", "started": "?"}

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Release the lock. The file stays (never unlinked: removing a lock file races with a process
        that opened it a moment before); its content is only informative."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)  # a clean exit leaves an empty file: content means a dead holder
        with contextlib.suppress(OSError):
            os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# ------------------------------------------------------------------------------- directory contract


def step_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """The ``step-NNNNNN.ckpt`` files of a ``checkpoints/`` directory, with their steps (unsorted)."""
    found = []
    for path in directory.glob("step-*.ckpt"):
        match = re.fullmatch(r"step-(\d+)\.ckpt", path.name)
        if match is not None:
            found.append((int(match.group(1)), path))
    return found


def read_resumes(run_dir: Path) -> list[dict[str, Any]]:
    """The run's resumes so far (:data:`RESUMES_FILE`), oldest first; a line a crash cut short is skipped."""
    records = []
    with contextlib.suppress(FileNotFoundError):
        for line in (run_dir / RESUMES_FILE).read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
    return records


def record_resume(run_dir: Path, record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Append ``record`` (with the time) to the run's :data:`RESUMES_FILE`; returns the resumes before it,
    oldest first. ``config.yaml`` holds the latest config: with this file a run resumed with changes says
    which changes, at which step, for each of its segments."""
    earlier = read_resumes(run_dir)
    path = run_dir / RESUMES_FILE
    cut = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with path.open("a", encoding="utf-8") as f:  # after a line a crash cut short: on a line of its own
        f.write(("\n" if cut else "") + json.dumps({**record, "at": _now()}, default=str) + "\n")
    return earlier


def existing_run_files(run_dir: Path) -> list[str]:
    """The names of :data:`RUN_FILES` present in ``run_dir``."""
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def _what_to_do(run_dir: Path) -> str:
    """The refusal's advice: ``--resume auto`` only where there is a ``last.ckpt`` for it to read; a run that
    failed before its first checkpoint, or kept none, has nothing to continue."""
    advice = "pass --resume auto to continue it, --overwrite to replace it, or choose another --out"
    checkpoints = run_dir / "checkpoints"
    if (checkpoints / "last.ckpt").is_file():
        return advice
    saved = sorted(checkpoints.glob("step-*.ckpt")) if checkpoints.is_dir() else []
    if saved:
        return (
            f"it has no checkpoints/last.ckpt for --resume auto: pass --resume {saved[-1]} to continue from its "
            "latest step checkpoint, --overwrite to replace it, or choose another --out"
        )
    try:
        summary = read_summary(run_dir / "summary.json")
    except RunDirError:
        summary = None
    if summary is not None and summary.status == "failed":
        error = f": {summary.error}" if summary.error else ""
        return (
            f"it failed before its first checkpoint{error}; nothing to continue: fix that and pass "
            "--overwrite to start it again, or choose another --out"
        )
    return "it has no checkpoint to continue from: pass --overwrite to replace it, or choose another --out"


def _holds_results(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a step's results: a checkpoint, or a row in ``metrics.csv``."""
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.glob("*.ckpt")):
        return True
    metrics = run_dir / "metrics.csv"
    try:
        with metrics.open() as f:
            f.readline()  # the header
            return bool(f.readline())
    except OSError:
        return False


def prepare_run_dir(
    run_dir: Path, *, resume: Path | bool | None, overwrite: bool, log: Callable[[str], None]
) -> None:
    """Refuse a directory that holds a run unless resuming it (``resume``: the checkpoint found, one of its
    own ``checkpoints/``) or overwriting; with ``overwrite`` remove exactly :data:`RUN_FILES`. A checkpoint
    of another run continued into a directory that holds a run would splice the two into one
    ``metrics.csv``: refused like a plain reuse. The caller holds the directory's :class:`RunLock`."""
    present = existing_run_files(run_dir)
    own = resume is True or (
        isinstance(resume, Path) and (run_dir / "checkpoints").resolve() in resume.resolve().parents
    )
    # a continuation that failed before its first checkpoint left only its config and summary: retried
    if not present or own or (resume and not _holds_results(run_dir)):
        return
    if not overwrite:
        if resume:
            raise RunDirError(
                f"{run_dir}: already holds a run ({', '.join(present)}), and {resume} is not one of its "
                "checkpoints: continuing another run here would mix the two runs' results; choose a new --out "
                "for the continuation, or --overwrite to replace this run"
            )
        raise RunDirError(f"{run_dir}: already holds a run ({', '.join(present)}); {_what_to_do(run_dir)}")
    for name in present:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    log(f"[entropyctl] --overwrite: removed {', '.join(present)} from {run_dir}")


# ------------------------------------------------------------------------------------ fingerprints


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def _file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:  # the data loader reports it, with the run marked failed
        return f"unreadable ({err.strerror or err})"
    return digest.hexdigest()


def run_fingerprint(config: Any) -> dict[str, Any]:
    """What a resume must agree on: ``{"config": {dotted key: value}, "data": {path: sha256}}``.

    Plain strings, numbers, lists and dicts only (checkpoints load with ``weights_only=True``).
    Fields in :data:`IGNORED_FOR_RESUME` are left out; the synthetic data set is fully described by
    the config, a file data set by the SHA-256 of its bytes.
    """
    data: dict[str, str] = {}
    for path in (config.data.path, *config.data.eval_files()):
        if config.data.source == "file" and path:
            data[str(path)] = _file_sha256(path)
    return {"config": config_fingerprint(config), "data": data}


def config_fingerprint(config: Any) -> dict[str, Any]:
    """The config part of :func:`run_fingerprint`: ``{dotted key: value}`` without the fields in
    :data:`IGNORED_FOR_RESUME` (no file is read)."""
    flat = _flatten(config.model_dump(mode="json"))
    kept = {
        key: value
        for key, value in flat.items()
        if not any(key == skip or key.startswith(skip + ".") for skip in IGNORED_FOR_RESUME)
    }
    return dict(json.loads(json.dumps(kept)))


def fingerprint_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """One line per difference, ``"controller.tau: 0.4 -> 0.5"``; empty when they agree. A config key
    the saved fingerprint lacks (written before the field existed) compares as the value
    :data:`~entropyctl.config.ABSENT_MEANS` gives it."""
    from entropyctl.config import ABSENT_MEANS

    lines: list[str] = []
    for part in ("config", "data"):
        old, new = dict(saved.get(part, {})), dict(current.get(part, {}))
        for key in sorted(set(old) | set(new)):
            missing = "<absent>"
            # a key the saved run lacks was added since: it ran as ABSENT_MEANS says
            default = ABSENT_MEANS.get(key, missing) if part == "config" else missing
            before, after = old.get(key, default), new.get(key, missing)
            if before != after:
                label = key if part == "config" else f"data file {key}"
                if part == "data" and before != missing and after != missing:
                    lines.append(
                        f"{label}: contents changed (sha256 {str(before)[:12]} -> {str(after)[:12]})"
                    )
                else:
                    lines.append(f"{label}: {before!r} -> {after!r}")
    return lines


# ---------------------------------------------------------------------------------------- status


class RunStatus:
    """``summary.json`` while the run lives: ``{"status": "running", "pid", "host", "started_at",
    "updated_at", "steps", ...}`` rewritten atomically, with a heartbeat thread refreshing
    ``updated_at`` every ``interval`` seconds; :meth:`finish` stops the heartbeat and writes the final
    summary (no heartbeat can overwrite it afterwards)."""

    def __init__(self, path: Path, *, interval: float = HEARTBEAT_S) -> None:
        self.path = Path(path)
        self.interval = float(interval)
        self.fields: dict[str, Any] = {
            "status": "running",
            "steps": 0,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": _now(),
            "heartbeat_s": self.interval,
        }
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> RunStatus:
        self._write()
        self._thread = threading.Thread(target=self._beat, name="entropyctl-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._done.wait(self.interval):
            self._write()

    def _write(self) -> None:
        with self._lock:
            if self._done.is_set() and self.fields.get("status") == "running":
                return
            self.fields["updated_at"] = _now()
            with contextlib.suppress(OSError):
                write_json_atomic(self.path, self.fields)

    def update(self, **fields: Any) -> None:
        """Merge ``fields`` into the running record and write it now."""
        with self._lock:
            self.fields.update(fields)
        self._write()

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Stop the heartbeat and write the final record (``summary`` plus pid/host/times)."""
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            record = {k: self.fields[k] for k in ("pid", "host", "started_at")}
            record.update(summary)
            record["updated_at"] = _now()
            self.fields = record
            write_json_atomic(self.path, record)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_run_state(run_dir: str | Path, *, now: float | None = None) -> str:
    """``summary.json``'s status, except that a ``"running"`` run whose process is gone reads
    ``"dead"``: on this host, its pid no longer exists; elsewhere, its heartbeat is older than three
    intervals. ``"missing"`` when there is no readable summary."""
    path = Path(run_dir) / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return "missing"
    status = str(summary.get("status", "missing"))
    if status != "running":
        return status
    if summary.get("host") == socket.gethostname() and isinstance(summary.get("pid"), int):
        return "running" if _pid_alive(summary["pid"]) else "dead"
    try:
        updated = _dt.datetime.fromisoformat(str(summary["updated_at"])).timestamp()
    except (KeyError, ValueError):
        return "dead"
    age = (time.time() if now is None else now) - updated
    return "running" if age <= 3 * float(summary.get("heartbeat_s", HEARTBEAT_S)) else "dead"


# ---------------------------------------------------------------------------------------- signals


#: Set by `entropyctl ablate` for each run it launches: ablate's pid, whose death stops the run.
PARENT_ENV = "ENTROPYCTL_PARENT_PID"


def follow_parent(poll_s: float = 0.5) -> bool:
    """Tie this run to the `ablate` that launched it (``ENTROPYCTL_PARENT_PID``): a daemon thread
    checks every ``poll_s`` seconds that ablate is still this process's parent, and when it is not
    (ablate died, even by SIGKILL) sends this process one SIGTERM: it stops as on any (its step, a
    checkpoint, exit 143). False when ablate is already gone; without the variable nothing is tied
    and True. The variable is removed, so processes this run starts are not tied.

    (Linux's parent-death signal would be immediate, but it comes once per thread of the parent as
    they die, so a run saw two SIGTERMs and abandoned its step; a poll sends exactly one.)"""
    expected = os.environ.pop(PARENT_ENV, None)
    if not expected or os.name != "posix":
        return True
    if str(os.getppid()) != expected:
        return False

    def watch() -> None:
        import signal

        while str(os.getppid()) == expected:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="entropyctl-parent-watch", daemon=True).start()
    return True


class StopSignals:
    """SIGTERM/SIGINT handling for a run (main thread only).

    While ``graceful`` is False (set-up, evaluation after the last step, writing the summary) a signal
    raises :class:`RunStopped` at once. While it is True (between training steps, set by the trainer's
    callback) the first signal only records itself in ``requested``: the step in progress finishes,
    ``last.ckpt`` is written, then the callback raises :class:`RunStopped`. A second signal, or the step
    still running ``grace_s`` seconds after the first (SIGALRM timer), abandons the step.

    ``forward`` (optional; rank 0's, Lightning's launcher's ``kill``) passes the first signal on to the
    run's other processes as :attr:`FORWARDED`, which only asks for a stop after the step: a Ctrl-C in a
    terminal reaches every process of the group by itself too, and the forwarded copy, were it the same
    signal, would be each child's second — it abandoned its step, and the run failed in the next
    collective without a checkpoint.
    """

    SIGNALS = ("SIGTERM", "SIGINT")
    #: what ``forward`` sends: "stop after the step in progress", never counted as a second signal
    FORWARDED = "SIGUSR2"

    def __init__(self, grace_s: float | None = None) -> None:
        self.requested: int | None = None
        self.graceful = False
        self.forward: Callable[[int], None] | None = None
        #: a step still running this long after the first signal is abandoned (None: wait for it)
        self.grace_s = grace_s
        self._previous: dict[int, Any] = {}
        self._alarm_previous: Any = None
        self._only_forwarded = False  # the request so far is another process's, forwarded
        #: the step's checkpoints are being written: a first signal then starts no grace timer
        self.saving = False

    def install(self) -> StopSignals:
        """Install (or re-install, over a framework's own handler) the handlers; no-op off the main thread."""
        import signal

        if threading.current_thread() is not threading.main_thread():
            return self
        for name in self.SIGNALS:
            signum = int(getattr(signal, name))
            previous = signal.signal(signum, self._handle)
            self._previous.setdefault(signum, previous)
        forwarded = getattr(signal, self.FORWARDED, None)  # none on Windows
        if forwarded is not None:
            self._previous.setdefault(int(forwarded), signal.signal(forwarded, self._handle_forwarded))
        return self

    def cancel_grace(self) -> None:
        """Stop the grace timer (the step ended in time: the checkpoint is written without a deadline)."""
        import signal

        if self._alarm_previous is None or threading.current_thread() is not threading.main_thread():
            return
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._alarm_previous)
        self._alarm_previous = None

    def _start_grace(self) -> None:
        import signal

        if not self.grace_s or threading.current_thread() is not threading.main_thread():
            return
        self._alarm_previous = signal.signal(signal.SIGALRM, self._expire)
        signal.setitimer(signal.ITIMER_REAL, float(self.grace_s))

    def _expire(self, signum: int, frame: Any) -> None:
        self.cancel_grace()
        raise RunStopped(self.requested or signum, abandoned=True)

    def restore(self) -> None:
        import signal

        if threading.current_thread() is not threading.main_thread():
            return
        self.cancel_grace()
        for signum, previous in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        import signal

        # a signal of its own after a forwarded one (Ctrl-C reaches every process, in either order) is the first
        first = self.requested is None or self._only_forwarded
        if first:
            self.requested, self._only_forwarded = int(signum), False
            if self.forward is not None:
                with contextlib.suppress(Exception):
                    self.forward(int(getattr(signal, self.FORWARDED, signum)))
        if not self.graceful or not first:
            raise RunStopped(signum, abandoned=True)
        if self._alarm_previous is None and not self.saving:  # a forwarded request may have started it
            self._start_grace()

    def _handle_forwarded(self, signum: int, frame: Any) -> None:
        """Another process of the run was asked to stop: stop after the step in progress (as SIGTERM). It
        never abandons a step, and never counts as a second signal."""
        import signal

        if self.requested is not None:
            return
        self.requested, self._only_forwarded = int(signal.SIGTERM), True
        if not self.graceful:
            raise RunStopped(self.requested, abandoned=True)
        if not self.saving:
            self._start_grace()

    def __enter__(self) -> StopSignals:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()


# --------------------------------------------------------------------------------------------- the contract
# What a run directory holds, declared once: the trainer writes it, the report, `entropyctl evaluate` and
# the tests read it through these names.


CONTROLLER_PREFIX = "controller/"
SHAPING_PREFIX = "shaping/"


def metric_columns(
    levels: Sequence[int], controller_metrics: Sequence[str] = (), shaping_labels: Sequence[str] = ()
) -> list[str]:
    """The columns of ``metrics.csv``, in order (fixed for a run: every row has every column).

    ``controller_metrics``: the keys of the run's ``controller.metrics()`` (a plugin's included), each
    logged as ``controller/<key>`` after the fixed columns, the per-level ones and ``shaping/<label>``
    (each ``reward.shaping`` entry's mean raw score, ``RewardConfig.shaping_labels``).
    """
    cols = [
        "step",
        "reward",
        "accuracy",
        "entropy",
        "target_entropy",
        "h0",
        "alpha",
        "coef_mean",
        "clip_frac_low",
        "clip_frac_high",
        "clip_frac_dual",
        "response_length",
        "truncated_frac",
        "loss",
        "pg_loss",
        "entropy_loss",
        "kl_loss",
        "kl_reward",
        "kl_reward_token_mean",
        "kl_reward_coef",
        "sampler_kl",
        "sampler_logp_diff",
        "is_weight_mean",
        "is_bounded_frac",
        "grad_norm",
        "skipped",
        "lr",
        "data_epoch",
        "tokens",
        "dropped_groups",
        "filler_groups",
        "reward_no_answer",
        "reward_parse_error",
        "reward_timeout",
        "readings_ignored",
        "time_sync",
        "time_rollout",
        "time_reward",
        "time_update",
        "time_step",
    ]
    for level in levels:
        cols += [level_column(kind, level) for kind in LEVEL_KINDS]
    cols += [SHAPING_PREFIX + label for label in shaping_labels]
    cols += [CONTROLLER_PREFIX + str(key) for key in controller_metrics]
    return cols


class MetricsWriter:
    """Appends one row per step to ``metrics.csv`` (fixed columns; rank 0 only). On resume, rows past the
    checkpoint's step are dropped first so the file has each step once."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.columns = list(columns)

    def truncate_after(self, step: int) -> None:
        """Keep the rows up to ``step``. Rows are in step order; a line a crash cut short (no newline, too few
        fields, a step that does not parse, NUL bytes) ends the copy, as does the first row past ``step``."""
        if not self.path.exists():
            return
        with self.path.open(newline="") as f:
            lines = f.read().splitlines(keepends=True)
        header = next(csv.reader(lines[:1]), [])
        rows: list[dict[str, Any]] = []
        for line in lines[1:]:
            try:
                fields = next(csv.reader([line]), [])
                row = dict(zip(header, fields, strict=False))
                row_step = float(row.get("step", "nan"))
            except (csv.Error, ValueError):
                break
            if not line.endswith("\n") or len(fields) != len(header) or not row_step <= step:
                break
            rows.append(row)
        self._rewrite(rows)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        # temp file + rename (write_atomic): a reader (or a kill) never sees a truncated file
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=self.columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(self.path, lambda f: f.write(buffer.getvalue().encode()))

    def write(self, row: dict[str, Any]) -> None:
        if not self.path.exists():
            self._rewrite([])  # the header, atomically
        # one row = one write() of a complete line: appended, never truncating earlier rows
        buffer = io.StringIO()
        csv.DictWriter(buffer, fieldnames=self.columns, extrasaction="ignore").writerow(
            {k: _fmt(row.get(k, math.nan)) for k in self.columns}
        )
        with self.path.open("a", newline="") as f:
            f.write(buffer.getvalue())


#: a completions.jsonl row starts with its step (the writer puts it first)
_ROW_STEP = re.compile(r'\{"step": (\d+)[,}]')


class CompletionsWriter:
    """Appends a step's rollouts to ``completions.jsonl``, one JSON object per completion (rank 0 only).
    On resume, rows past the checkpoint's step are dropped first, as :class:`MetricsWriter` does."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Keep the rows up to ``step``, streamed (only each row's step is read). Rows are in step order, so
        the copy stops at the first row past it; a line that does not parse (the tail of a write a kill cut
        short) ends it too."""
        if not self.path.exists():
            return

        def copy(dst: Any) -> None:
            with self.path.open(encoding="utf-8") as src:
                for line in src:
                    match = _ROW_STEP.match(line)
                    if match is None or not line.endswith("\n") or int(match.group(1)) > step:
                        break
                    dst.write(line.encode("utf-8"))

        write_atomic(self.path, copy)  # temp file + rename, as the metrics' rewrite

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        # one write() of complete lines: appended, never truncating earlier rows
        # "step" first: truncate_after reads it off the start of each line
        text = "".join(json.dumps({"step": row["step"], **row}, ensure_ascii=False) + "\n" for row in rows)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(text)


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)  # round-trips exactly
    return value


#: Per-level columns: ``<kind>_level_<level>`` for each training level.
LEVEL_KINDS = ("acc", "coef", "entropy")
_LEVEL_COLUMN = re.compile(r"^(acc|coef|entropy)_level_(-?\d+)$")
_PASS_KEY = re.compile(r"^pass@(\d+)$")


def level_column(kind: str, level: int | str) -> str:
    """``level_column("acc", 2)`` → ``acc_level_2``."""
    if kind not in LEVEL_KINDS:
        raise ValueError(f"unknown per-level column kind {kind!r} (one of {', '.join(LEVEL_KINDS)})")
    return f"{kind}_level_{level}"


def coefficient_acted(row: Mapping[str, str | float]) -> float:
    """The bonus coefficient that acted on a step's tokens, from a ``metrics.csv`` row (as read, or as
    logged): ``coef_mean``, 0 on a step ``algorithm.skip_no_signal`` left alone (:func:`step_skipped`:
    its plan was made, no weight moved), NaN when the row has no ``coef_mean``."""
    if step_skipped(row):
        return 0.0
    coef = row.get("coef_mean", "")
    return math.nan if coef == "" else float(coef)


def step_skipped(row: Mapping[str, str | float]) -> bool:
    """Whether ``algorithm.skip_no_signal`` left a step alone, from its ``metrics.csv`` row (as read, or
    as logged): its ``skipped`` column; in a row without one (a run written before it), ``grad_norm``
    exactly 0 — which a step that trained can also log, when its last mini-batch had no gradient."""
    skipped = row.get("skipped", "")
    if skipped != "" and not math.isnan(float(skipped)):  # "" / NaN: a row written before the column
        return float(skipped) == 1.0
    grad_norm = row.get("grad_norm", "")
    return grad_norm != "" and float(grad_norm) == 0.0


def column_level(column: str, kind: str) -> int | None:
    """The level of a ``<kind>_level_<level>`` column, None for any other column."""
    match = _LEVEL_COLUMN.match(column)
    return int(match.group(2)) if match and match.group(1) == kind else None


def pass_key(k: int) -> str:
    """The key of pass@k in an evaluation record (``pass@4``)."""
    return f"pass@{k}"


def pass_k(key: str) -> int | None:
    """k of a ``pass@k`` key, None for any other key."""
    match = _PASS_KEY.match(key)
    return int(match.group(1)) if match else None


class Summary(BaseModel):
    """``summary.json``: what a run reports about itself. Written by the trainer (while it runs: status
    ``running`` and a heartbeat), read by ``entropyctl report`` and the tests. Evaluations (``before``,
    ``after``, ``evals[tag]``) are pass@k records: ``{"pass@1": ..., "by_level": {...}, ...}`` (and
    ``"by_set"`` with several held-out files). Keys not
    declared here are kept (a newer trainer's fields stay readable)."""

    model_config = ConfigDict(extra="allow")

    status: str = "missing"
    steps: int | None = None
    controller: str | None = None
    seed: int | None = None
    wall_time_s: float | None = None
    final_entropy: float | None = None
    h0: float | None = None
    alpha: float | None = None
    target_entropy: float | None = None
    final_reward: float | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    evals: dict[str, Any] | None = None
    #: how the run held its entropy band (controllers.band.BandHealth.as_dict); absent without a target
    band: dict[str, Any] | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status == "finished"


def read_band_health(metrics_csv: str | Path, bounds: tuple[float, float] | None = None) -> BandHealth | None:
    """How the run whose ``metrics.csv`` this is held its entropy band (controllers.band.band_health);
    None for a run without a target (``fixed``, ``clip_higher``: no ``target_entropy`` logged) or
    without the file."""
    path = Path(metrics_csv)
    if not path.exists():
        return None
    metrics = read_metrics(path)
    return band_health(
        metrics["step"].astype(int), metrics["entropy"], metrics["target_entropy"], metrics["alpha"], bounds
    )


def float_or_nan(value: Any) -> float:
    """A value as a float; None, an empty cell or a non-number as NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def read_metrics(path: str | Path) -> dict[str, np.ndarray]:
    """metrics.csv → {column: float array}; empty cells and non-numbers become NaN. A file without a
    header raises :class:`RunDirError` naming it."""
    path = Path(path)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            raise RunDirError(f"{path}: empty file, expected a CSV header with at least 'step,entropy'")
        columns: dict[str, list[float]] = {name: [] for name in reader.fieldnames}
        for row in reader:
            for name in reader.fieldnames:
                columns[name].append(float_or_nan(row.get(name)))
    return {name: np.asarray(values, dtype=float) for name, values in columns.items()}


def read_summary(path: str | Path) -> Summary:
    """``summary.json`` as a :class:`Summary`; a missing file reads as status ``missing``. A file that is
    not JSON or does not fit the contract raises :class:`RunDirError` naming the file (and line/field)."""
    path = Path(path)
    if not path.exists():
        return Summary()
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunDirError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err
    try:
        return Summary.model_validate(data)
    except ValidationError as err:
        lines = format_validation_error(err)
        raise RunDirError(f"{path}: not a run summary: {'; '.join(lines)}") from None
