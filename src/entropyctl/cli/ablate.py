"""``entropyctl ablate``: arms x seeds, in :mod:`entropyctl.experiments.ablate`."""

from __future__ import annotations

import argparse
from typing import Any

from entropyctl.cli.options import add_config_option, add_set_option, add_threads_option


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_option(
        parser,
        "base run config YAML (may hold an `ablation:` section with arms/seeds/jobs)",
        required=True,
    )
    parser.add_argument(
        "--arms",
        nargs="+",
        default=None,
        metavar="ARM",
        help="CONTROLLER[:key=value,...] each (e.g. fixed:alpha=0.01 clip_higher aer:tau=0.2), "
        "or a YAML file with an `arms:` list (default: the config's ablation.arms)",
    )
    parser.add_argument(
        "--seeds",
        default=None,
        metavar="N|S,S,...",
        help="a count N (seeds 0..N-1: `--seeds 1` is seed 0) or a comma-separated list "
        "(`--seeds 1,` is seed 1 alone) (default: ablation.seeds, else 1)",
    )
    parser.add_argument(
        "--jobs", type=int, default=None, help="runs in parallel processes (default: ablation.jobs, else 1)"
    )
    parser.add_argument(
        "--out", metavar="DIR", default="runs/ablation", help="output directory (default runs/ablation)"
    )
    add_set_option(
        parser,
        "override a base-config field for every arm, e.g. --set trainer.steps=50",
    )
    add_threads_option(parser, "torch threads per run (default: cores / jobs)")
    parser.add_argument(
        "--no-report", dest="report", action="store_false", help="skip `entropyctl report` at the end"
    )


def run(args: Any) -> int:
    """`entropyctl ablate` (the cli package parses the arguments). Exit status 1 when a run failed,
    128 + the signal number when stopped by SIGTERM/SIGINT (the same command then continues)."""
    import shlex
    import sys

    from entropyctl.config import ConfigError
    from entropyctl.experiments.ablate import run_ablation

    seeds: int | list[int] | None = None
    if args.seeds is not None:
        text = str(args.seeds).strip()
        try:
            seeds = [int(s) for s in text.split(",") if s.strip()] if "," in text else int(text)
        except ValueError:
            raise ConfigError(
                f"--seeds: expected a count N or a list like 0,1,2 (got {args.seeds!r})"
            ) from None
    summary = run_ablation(
        args.config,
        args.arms,
        seeds,
        out=args.out,
        jobs=args.jobs,  # None: the config's ablation.jobs
        overrides=args.overrides,
        threads_per_job=args.threads,
        report=args.report,
        command="entropyctl " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["ablate"] else None,
    )
    if summary.get("stopped") is not None:
        return 128 + int(summary["stopped"])  # as `entropyctl train` does (143 for SIGTERM)
    return 1 if summary["failed"] else 0
