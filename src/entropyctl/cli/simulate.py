"""``entropyctl simulate``: a controller against the entropy plant (no Lightning, no transformers)."""

from __future__ import annotations

import argparse
import math
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument(
        "--hill",
        type=float,
        default=None,
        help="Hill exponent of the plant's response (default 1; 2-4: dead decades below 1/gain, then a cliff)",
    )
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


def run(args: argparse.Namespace) -> int:
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
            "hill": args.hill,
        }.items()
        if value is not None
    }
    try:
        plant = EntropyPlant(seed=args.seed, **plant_kwargs)
    except ValueError as err:  # a bad --decay, --hill, ...: a clear error, not a traceback
        raise ConfigError(f"plant: {err}") from None
    trajectory = simulate(controller, plant, args.steps)

    def flat(prefix: str, value: object) -> list[str]:  # nested parts as dotted keys: update.step=0.1
        if isinstance(value, dict):
            return [item for k, v in value.items() for item in flat(f"{prefix}{k}.", v)]
        return [f"{prefix[:-1]}={value}"]

    fields = ", ".join(flat("", {k: v for k, v in config.model_dump().items() if k != "name"}))
    print(f"controller {config.name}: {fields}")
    print(
        f"plant: h_init={plant.h_init} h_max={plant.h_max} decay={plant.decay} gain={plant.gain} "
        f"noise={plant.noise} hill={plant.hill} seed={plant.seed}"
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
