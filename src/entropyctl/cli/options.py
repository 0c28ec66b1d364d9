"""Options several subcommands share, declared once."""

from __future__ import annotations

import argparse

__all__ = ["add_config_option", "add_set_option", "add_threads_option"]


def add_config_option(parser: argparse.ArgumentParser, help: str, *, required: bool = False) -> None:
    """``--config FILE``: a run config YAML."""
    parser.add_argument("--config", metavar="FILE", default=None, required=required, help=help)


def add_set_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable), collected in ``args.overrides``."""
    parser.add_argument(
        "--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[], help=help
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1 (got {text!r})") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1 (got {value})")
    return value


def add_threads_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``--threads N`` (torch threads, N ≥ 1; argparse's one-line error otherwise), in ``args.threads``."""
    parser.add_argument("--threads", type=_positive_int, default=None, metavar="N", help=help)
