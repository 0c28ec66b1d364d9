"""Options several subcommands share, declared once."""

from __future__ import annotations

import argparse

__all__ = ["add_config_option", "add_set_option"]


def add_config_option(parser: argparse.ArgumentParser, help: str, *, required: bool = False) -> None:
    """``--config FILE``: a run config YAML."""
    parser.add_argument("--config", metavar="FILE", default=None, required=required, help=help)


def add_set_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable), collected in ``args.overrides``."""
    parser.add_argument(
        "--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[], help=help
    )
