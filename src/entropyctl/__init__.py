"""entropyctl: entropy controllers (AER and friends) for RLVR training of language models.

Layout, by role; a package imports only the ones below it (docs/architecture.md; a test checks it)::

    cli/            one module per subcommand
    integrations/   adapters to other frameworks (TRL), over this public API
    experiments/    ablations and their reports
    trainer/        the Lightning module and its step, distributed statistics, prompt sampler,
                    run directory (lifecycle and contract), checkpoints, pass@k, run_training
    config/         the run config, YAML and overrides
    models/         the tiny model, loading, the training forward, warm start
    rollout/        the engine protocol, the Hugging Face and vLLM engines
    data/           synthetic task, dataset files, reasoning-gym, templates
    rewards/        answer extraction, the math verifier, the reward registry
    controllers/    the controller API, registry, controllers and their configs, the entropy plant
    ops/            entropy, losses, advantages (plain torch)
    validation, cache

The controller API is imported eagerly (it needs only torch and pydantic); the trainer
(:class:`RLVRModule`, which pulls in Lightning and transformers) and :class:`RunConfig` are
resolved lazily on first attribute access, so ``import entropyctl`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from entropyctl.config import (
    ConfigError,
    ControllerConfig,
    apply_overrides,
    load_yaml,
    parse_controller_config,
)
from entropyctl.controllers.base import (
    EntropyController,
    EntropyReading,
    GroupOutcome,
    Plan,
    is_usable_reading,
)
from entropyctl.controllers.registry import (
    available_controllers,
    create_controller,
    get_config_class,
    get_controller_class,
    register_controller,
)

if TYPE_CHECKING:  # pragma: no cover
    from entropyctl.config import RunConfig  # type: ignore[attr-defined]
    from entropyctl.trainer.module import RLVRModule

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ControllerConfig",
    "EntropyController",
    "EntropyReading",
    "GroupOutcome",
    "Plan",
    "RLVRModule",
    "RunConfig",
    "apply_overrides",
    "available_controllers",
    "create_controller",
    "get_config_class",
    "get_controller_class",
    "is_usable_reading",
    "load_yaml",
    "parse_controller_config",
    "register_controller",
]

# name → module that defines it; imported on first access (PEP 562).
_LAZY = {
    "RLVRModule": "entropyctl.trainer.module",
    "RunConfig": "entropyctl.config",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'entropyctl' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
