"""``entropyctl train``: arguments here, the run in :mod:`entropyctl.trainer.run`."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from entropyctl.cli.options import add_config_option, add_set_option, add_threads_option
from entropyctl.trainer.run_dir import RUN_FILES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_option(
        parser,
        "run config YAML (default: the embedded default: tiny model, graded arithmetic, aer)",
    )
    add_set_option(
        parser,
        "override a config field, e.g. --set controller.tau=0.3 --set trainer.devices=2",
    )
    parser.add_argument(
        "--out", metavar="DIR", default=None, help="run directory (default: <output_dir>/<time>-<controller>)"
    )
    parser.add_argument(
        "--resume",
        metavar="CKPT",
        default=None,
        help="continue from a checkpoint; 'auto': <run dir>/checkpoints/last.ckpt if present",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (removes only the run's own files: "
        + ", ".join(RUN_FILES)
        + ")",
    )
    parser.add_argument(
        "--allow-resume-changes",
        action="store_true",
        help="--resume even when the config or data differ from the checkpoint's (recorded in summary.json)",
    )
    add_threads_option(parser, "torch threads per process")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved run config (the config file, or the embedded default, with every --set "
        "applied and every field not given at its default) as YAML and exit; writes nothing",
    )
    parser.add_argument(
        "--no-progress-bar",
        dest="progress_bar",
        action="store_false",
        default=None,
        help="hide Lightning's progress bar",
    )


def resolved_config(config_path: str | None, overrides: Sequence[str], threads: int | None) -> Any:
    """The run config `entropyctl train` would run: the file (or the embedded default), the --set
    overrides, then --threads."""
    from entropyctl.config import load_run_config

    extra = [*overrides, *([f"trainer.threads={threads}"] if threads is not None else [])]
    return load_run_config(config_path, extra)


def train_from_cli(
    config_path: str | None,
    overrides: Sequence[str],
    out: str | None,
    *,
    resume: str | None = None,
    overwrite: bool = False,
    allow_resume_changes: bool = False,
    threads: int | None = None,
    progress_bar: bool | None = None,
) -> dict[str, Any]:
    """What `entropyctl train` does (the cli package parses the arguments)."""
    from entropyctl.trainer.run import RUN_DIR_ENV, check_resume_target, resolve_run_dir, run_training

    config = resolved_config(config_path, overrides, threads)
    check_resume_target(config, out, resume)
    # resolve_run_dir makes the time-stamped directory (neither --out nor run_name, and not a DDP child)
    made = out is None and config.run_name is None and not os.environ.get(RUN_DIR_ENV)
    run_dir = resolve_run_dir(config, out)
    try:
        return run_training(
            config,
            run_dir,
            resume=resume,
            overwrite=overwrite,
            allow_resume_changes=allow_resume_changes,
            progress_bar=progress_bar,
            made_dir=made,
        )
    except BaseException:
        if made:  # a run refused before it wrote leaves no empty directory behind
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only when empty
        raise


def run(args: Any) -> int:
    """`entropyctl train` (arguments parsed by the cli package). Exit status: 0 finished, 1 failed, 2 refused
    (a config or run-directory error, one line: the cli package's handler), 128 + the signal number when
    stopped by SIGTERM (143) or SIGINT (130)."""
    from entropyctl.trainer.run_dir import RunStopped, follow_parent

    if getattr(args, "print_config", False):
        sys.stdout.write(resolved_config(args.config, args.overrides, args.threads).to_yaml())
        return 0
    if not follow_parent():
        print("[entropyctl] the ablate that launched this run is gone: not started", file=sys.stderr)
        return 128 + int(signal.SIGTERM)
    try:
        summary = train_from_cli(
            args.config,
            args.overrides,
            args.out,
            resume=args.resume,
            overwrite=getattr(args, "overwrite", False),
            allow_resume_changes=getattr(args, "allow_resume_changes", False),
            threads=args.threads,
            progress_bar=args.progress_bar,
        )
    except RunStopped as stopped:
        return stopped.exit_code
    return 0 if summary.get("status") == "finished" else 1
