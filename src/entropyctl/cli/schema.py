"""``entropyctl schema``: the JSON schema of one controller config, of the union of all, or (``--run``)
of a whole run config."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="one controller's config schema (default: the union of all)")
    parser.add_argument(
        "--run",
        action="store_true",
        help="the schema of a whole run config (`entropyctl train --config`): every section and field, with "
        "its default and description",
    )


def run(args: argparse.Namespace) -> int:
    """Print the JSON schema of one controller config, or of the union over every registered one."""
    from pydantic import TypeAdapter

    from entropyctl.config import ConfigError
    from entropyctl.controllers.registry import (
        available_controllers,
        controller_config_union,
        get_config_class,
    )

    if args.run:
        if args.name:
            raise ConfigError(
                "schema: --run prints the whole run config's schema; name no controller with it"
            )
        from entropyctl.config import RunConfig

        schema = RunConfig.model_json_schema()
    elif args.name:
        try:
            schema = get_config_class(args.name).model_json_schema()
        except KeyError:
            names = ", ".join(available_controllers())
            raise ConfigError(f"schema: unknown controller {args.name!r} (available: {names})") from None
    else:
        schema = TypeAdapter(controller_config_union()).json_schema()
        schema.setdefault("title", "ControllerConfig")
    print(json.dumps(schema, indent=2, ensure_ascii=False))
    return 0
