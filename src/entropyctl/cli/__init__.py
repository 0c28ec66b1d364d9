"""The ``entropyctl`` command line: one argparse program with subcommands.

Adding a subcommand: append a :class:`Subcommand` to :data:`SUBCOMMANDS` with a cheap
``add_arguments(parser)`` function (defined here, importing nothing heavy) and ``run`` given as a
``"module:function"`` string; the module is imported only when that subcommand runs, and
``function(args: argparse.Namespace) -> int | None`` returns the exit status (None = 0).
An error meant for the user (:data:`_USER_ERRORS`: a bad config, dataset, checkpoint or run
directory, an unknown controller, a missing file) raised by ``run`` is printed as one
``entropyctl <cmd>: error: ...`` message with exit status 2; ``--debug`` or ``ENTROPYCTL_DEBUG=1``
re-raises it with its traceback.
Keep ``controllers``, ``schema`` and ``simulate`` free of Lightning/transformers imports.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Subcommand", "SUBCOMMANDS", "build_parser", "main"]


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: str  # "module:function", imported lazily


# --------------------------------------------------------------------------------------------
# controllers / schema / simulate
# --------------------------------------------------------------------------------------------


def _add_controllers_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def run_controllers(args: argparse.Namespace) -> int:
    """Print a table: registered controller name → one-line description."""
    from entropyctl.controllers.registry import available_controllers

    table = available_controllers()
    width = max((len(name) for name in table), default=4)
    print(f"{'name':<{width}}  description")
    for name, description in table.items():
        print(f"{name:<{width}}  {description}")
    return 0


def _add_schema_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="one controller's config schema (default: the union of all)")


def run_schema(args: argparse.Namespace) -> int:
    """Print the JSON schema of one controller config, or of the union over every registered one."""
    from pydantic import TypeAdapter

    from entropyctl.config import ConfigError
    from entropyctl.controllers.registry import (
        available_controllers,
        controller_config_union,
        get_config_class,
    )

    if args.name:
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


def _add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--config", metavar="FILE", help="YAML: a controller mapping, or a run config with `controller:`"
    )
    source.add_argument(
        "--controller", metavar="NAME", help="a registered controller name, with its defaults"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a controller field, e.g. --set tau=0.5 (or controller.tau=0.5); repeatable",
    )
    parser.add_argument("--steps", type=int, default=200, help="number of steps (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="plant seed (default 0)")
    parser.add_argument(
        "--gain", type=float, default=None, help="plant gain: nats response per unit coefficient"
    )
    parser.add_argument("--decay", type=float, default=None, help="plant relaxation rate per step, in (0, 1]")
    parser.add_argument("--noise", type=float, default=None, help="plant relative noise per step")
    parser.add_argument("--h-init", type=float, default=None, help="initial entropy (nats)")
    parser.add_argument("--plot", metavar="PNG", help="write a PNG of entropy and alpha over steps")


def _controller_mapping(args: argparse.Namespace) -> dict[str, Any]:
    from entropyctl.config import ConfigError, apply_overrides, load_yaml

    if args.config:
        data = load_yaml(args.config)
        if "controller" in data:
            data = apply_overrides(data, args.overrides)
            controller = data["controller"]
            if isinstance(controller, str):
                controller = {"name": controller}
            if not isinstance(controller, dict):
                raise ConfigError(f"{args.config}: controller: must be a mapping (got {controller!r})")
            return controller
        return apply_overrides(data, [o.removeprefix("controller.") for o in args.overrides])
    return apply_overrides({"name": args.controller}, [o.removeprefix("controller.") for o in args.overrides])


def run_simulate(args: argparse.Namespace) -> int:
    """Run a controller against the entropy plant and print step, H, H*, α (and write a plot)."""
    from entropyctl.config import ConfigError, parse_controller_config
    from entropyctl.controllers.plant import EntropyPlant, simulate
    from entropyctl.controllers.registry import create_controller

    if args.steps < 1:
        raise ConfigError(f"--steps: must be ≥ 1 (got {args.steps})")
    config = parse_controller_config(_controller_mapping(args))
    controller = create_controller(config)
    plant_kwargs = {
        key: value
        for key, value in {
            "gain": args.gain,
            "decay": args.decay,
            "noise": args.noise,
            "h_init": args.h_init,
        }.items()
        if value is not None
    }
    plant = EntropyPlant(seed=args.seed, **plant_kwargs)
    trajectory = simulate(controller, plant, args.steps)

    def flat(prefix: str, value: object) -> list[str]:  # nested parts as dotted keys: update.step=0.1
        if isinstance(value, dict):
            return [item for k, v in value.items() for item in flat(f"{prefix}{k}.", v)]
        return [f"{prefix[:-1]}={value}"]

    fields = ", ".join(flat("", {k: v for k, v in config.model_dump().items() if k != "name"}))
    print(f"controller {config.name}: {fields}")
    print(
        f"plant: h_init={plant.h_init} h_max={plant.h_max} decay={plant.decay} gain={plant.gain} "
        f"noise={plant.noise} seed={plant.seed}"
    )
    print(f"{'step':>6} {'H':>8} {'H*':>8} {'alpha':>10} {'coef':>10}")
    every = max(1, args.steps // 20)
    for i, step in enumerate(trajectory.step):
        if i % every == 0 or i == len(trajectory.step) - 1:
            target = trajectory.target_entropy[i]
            target_text = f"{target:8.4f}" if math.isfinite(target) else f"{'-':>8}"
            print(
                f"{step:>6} {trajectory.entropy[i]:8.4f} {target_text} {trajectory.alpha[i]:10.6f} "
                f"{trajectory.coef[i]:10.6f}"
            )
    if args.plot:
        _plot(trajectory, args.plot, title=f"{config.name} on the entropy plant (seed {args.seed})")
        print(f"wrote {args.plot}")
    return 0


def _plot(trajectory: Any, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7, 5))
    top.plot(trajectory.step, trajectory.entropy, label="H (entropy)")
    top.plot(trajectory.step, trajectory.target_entropy, "--", label="H* (target)")
    top.set_ylabel("nats / token")
    top.legend(loc="best")
    top.set_title(title)
    bottom.plot(trajectory.step, trajectory.alpha, label="α_t")
    bottom.plot(trajectory.step, trajectory.coef, alpha=0.6, label="applied coef (token mean)")
    bottom.set_ylabel("coefficient")
    bottom.set_xlabel("step")
    bottom.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# The subcommand table (other subcommands are appended below, one entry each)
# --------------------------------------------------------------------------------------------

SUBCOMMANDS: list[Subcommand] = [
    Subcommand(
        "controllers",
        "list the registered controllers",
        _add_controllers_arguments,
        "entropyctl.cli:run_controllers",
    ),
    Subcommand(
        "schema",
        "print a controller config's JSON schema",
        _add_schema_arguments,
        "entropyctl.cli:run_schema",
    ),
    Subcommand(
        "simulate",
        "run a controller against the entropy plant",
        _add_simulate_arguments,
        "entropyctl.cli:run_simulate",
    ),
]


# --------------------------------------------------------------------------------------------
# train / evaluate (logic in entropyctl.trainer.run and entropyctl.trainer.evaluation)
# --------------------------------------------------------------------------------------------


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="run config YAML (default: the embedded default: tiny model, graded arithmetic, aer)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a config field, e.g. --set controller.tau=0.3 --set trainer.devices=2",
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
        help="replace the run already in --out (removes only its config.yaml, metrics.csv, summary.json, "
        "checkpoints/, tensorboard/, ranks/)",
    )
    parser.add_argument(
        "--allow-resume-changes",
        action="store_true",
        help="--resume even when the config or data differ from the checkpoint's (recorded in summary.json)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process")
    parser.add_argument(
        "--no-progress-bar",
        dest="progress_bar",
        action="store_false",
        default=None,
        help="hide Lightning's progress bar",
    )


def _add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="RUN_OR_MODEL",
        help="a run directory (its last checkpoint), a .ckpt file, a model directory, "
        "a .gguf file, or 'smollm2'",
    )
    parser.add_argument(
        "--data",
        default="synthetic",
        metavar="FILE|synthetic",
        help="held-out problems: 'synthetic' or a JSONL/Parquet file",
    )
    parser.add_argument(
        "--k", default=None, help="comma-separated k of pass@k (default: the run's eval.ks, else 1,4,8)"
    )
    parser.add_argument(
        "--n",
        type=int,
        default=None,
        help="samples per problem (default: the run's eval.n_samples, at least max k)",
    )
    parser.add_argument(
        "--problems", type=int, default=None, help="number of problems (default: the run's eval.n_prompts)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the sampling stream (default: the run's seed; with the run's defaults the numbers "
        "equal its summary.json 'after' evaluation)",
    )
    parser.add_argument(
        "--temperature", type=float, default=None, help="sampling temperature (default: the run's, else 1.0)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, help="response length limit")
    parser.add_argument("--by", default="level", help="group results by this problem field (default level)")
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a field of the run config used for evaluation",
    )
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the result as JSON")


SUBCOMMANDS += [
    Subcommand(
        "train",
        "run RLVR training (GRPO/DAPO with an entropy controller)",
        _add_train_arguments,
        "entropyctl.trainer.run:run_train_cli",
    ),
    Subcommand(
        "evaluate",
        "pass@1 / pass@k of a run or model on held-out problems",
        _add_evaluate_arguments,
        "entropyctl.trainer.evaluation:run_evaluate_cli",
    ),
]


# --------------------------------------------------------------------------------------------
# ablate / report (logic in entropyctl.experiments.ablate and entropyctl.experiments.report)
# --------------------------------------------------------------------------------------------


def _add_ablate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        required=True,
        help="base run config YAML (may hold an `ablation:` section with arms/seeds/jobs)",
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
        help="N seeds 0..N-1, or a comma-separated list (default: ablation.seeds, else 1)",
    )
    parser.add_argument(
        "--jobs", type=int, default=None, help="runs in parallel processes (default: ablation.jobs, else 1)"
    )
    parser.add_argument(
        "--out", metavar="DIR", default="runs/ablation", help="output directory (default runs/ablation)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a base-config field for every arm, e.g. --set trainer.steps=50",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per run (default: cores / jobs)"
    )
    parser.add_argument(
        "--no-report", dest="report", action="store_false", help="skip `entropyctl report` at the end"
    )


def _add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="an ablation output directory (OUT/<arm>/seed<N>/...)")
    parser.add_argument(
        "--out", metavar="DIR", default=None, help="where to write report.md/json and plots (default DIR)"
    )
    parser.add_argument(
        "--window", type=int, default=None, help="moving-average window of the plots, in steps"
    )


SUBCOMMANDS += [
    Subcommand(
        "ablate",
        "run arms x seeds of training side by side, then report",
        _add_ablate_arguments,
        "entropyctl.experiments.ablate:run_ablate_cli",
    ),
    Subcommand(
        "report",
        "tables and plots comparing the runs of an ablation",
        _add_report_arguments,
        "entropyctl.experiments.report:run_report_cli",
    ),
]


# --------------------------------------------------------------------------------------------
# pretrain (logic in entropyctl.models.warm_start)
# --------------------------------------------------------------------------------------------


def _add_pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="run config YAML; its `model:` section is used (default: the embedded tiny model)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a run-config field, e.g. --set model.pretrain.lr=0.002 (repeatable)",
    )
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (model.pretrain.steps)")
    parser.add_argument(
        "--out", metavar="DIR", default=None, help="also copy the checkpoint to this directory"
    )
    parser.add_argument("--force", action="store_true", help="retrain even when a cached checkpoint exists")
    parser.add_argument(
        "--eval",
        dest="eval_problems",
        type=int,
        default=500,
        help="held-out problems to score greedily (default 500; 0: skip)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")


SUBCOMMANDS += [
    Subcommand(
        "pretrain",
        "warm-start (or find cached) the embedded tiny model",
        _add_pretrain_arguments,
        "entropyctl.models.warm_start:run_pretrain_cli",
    ),
]


def _add_common_arguments(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="show the full traceback of an error (also: ENTROPYCTL_DEBUG=1)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        default=default,
        help="also show library notices a user cannot act on (Lightning's hardware lines, progress bars "
        "of weight loading, deprecation warnings)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="entropyctl", description="Entropy controllers (AER and friends) for RLVR training."
    )
    _add_common_arguments(parser, False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in SUBCOMMANDS:
        child = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(child)
        # SUPPRESS: `entropyctl --debug train` and `entropyctl train --debug` both work.
        _add_common_arguments(child, argparse.SUPPRESS)
        child.set_defaults(_run=command.run)
    return parser


#: errors whose message is the whole story for the user: printed alone, exit status 2
_USER_ERRORS = {
    "entropyctl.config": "ConfigError",
    "entropyctl.controllers.registry": "RegistryError",
    "entropyctl.trainer.checkpoints": "CheckpointError",
    "entropyctl.data.loaders": "DatasetError",
    "entropyctl.trainer.run_dir": "RunDirError",
    "entropyctl.experiments.report": "ReportError",
}


def _is_user_error(err: BaseException) -> bool:
    # Only modules already imported can have raised their error: no import here.
    types: list[type] = [FileNotFoundError]
    for module_name, class_name in _USER_ERRORS.items():
        module = sys.modules.get(module_name)
        if module is not None:
            types.append(getattr(module, class_name))
    return isinstance(err, tuple(types))


def _debug_requested(args: argparse.Namespace) -> bool:
    env = os.environ.get("ENTROPYCTL_DEBUG", "").strip().lower()
    return bool(getattr(args, "debug", False)) or env not in ("", "0", "false", "no")


def _quiet_libraries() -> None:
    """Silence what a user cannot act on (kept with ``--verbose``); set before the libraries load."""
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bar
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:  # already imported (e.g. in-process use): the env is read at import
        sys.modules["transformers"].utils.logging.disable_progress_bar()
        sys.modules["transformers"].utils.logging.set_verbosity_error()
    # Lightning's "GPU available: False, used: False" / TPU lines and its litlogger tip (INFO level).
    # (weights_only=False on save means "full checkpoint", not an unsafe load; loads are weights_only.)
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.pytorch.trainer.connectors.checkpoint_connector",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (
        r".*weights_only.*",
        r".*LeafSpec.*",
        r".*litlogger.*",
        r".*Detected pickle protocol.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module_name, _, function_name = args._run.partition(":")
    if not getattr(args, "verbose", False):
        _quiet_libraries()
    try:
        run = getattr(importlib.import_module(module_name), function_name)
        status = run(args)
    except BrokenPipeError:  # `entropyctl schema | head`
        return 0
    except Exception as err:
        if not _is_user_error(err) or _debug_requested(args):
            raise
        print(f"entropyctl {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
