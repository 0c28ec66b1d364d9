"""``entropyctl report``: the report of an ablation directory, in :mod:`entropyctl.experiments.report`."""

from __future__ import annotations

import argparse
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dir",
        metavar="DIR",
        help="an ablation output directory (OUT/<arm>/seed<N>/...), one run directory, or a folder of runs (each its own arm)",
    )
    parser.add_argument(
        "--out", metavar="DIR", default=None, help="where to write report.md/json and plots (default DIR)"
    )
    parser.add_argument(
        "--window", type=int, default=None, help="moving-average window of the plots, in steps"
    )


def run(args: Any) -> int:
    """`entropyctl report DIR [--out DIR] [--window N]`."""
    from pathlib import Path

    from entropyctl.experiments.report import ReportError, write_report

    try:
        doc = write_report(args.dir, args.out, window=args.window)
    except ReportError as err:
        from entropyctl.config import ConfigError

        raise ConfigError(str(err)) from None
    out = Path(args.out or args.dir)
    print(f"report: {out / 'report.md'} ({len(doc['arms'])} arms; plots: {', '.join(doc['plots'].values())})")
    return 0
