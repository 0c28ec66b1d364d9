"""``entropyctl controllers``: the registered controllers, one line each."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def run(args: argparse.Namespace) -> int:
    """Print a table: registered controller name → one-line description."""
    from entropyctl.controllers.registry import available_controllers

    table = available_controllers()
    width = max((len(name) for name in table), default=4)
    print(f"{'name':<{width}}  description")
    for name, description in table.items():
        print(f"{name:<{width}}  {description}")
    return 0
