"""Configuration: the run config, YAML loading with ``key=value`` overrides, readable errors.

Layout: :mod:`entropyctl.config.run` (``RunConfig`` and its sections), :mod:`entropyctl.config.overrides`
(strict YAML, overrides), :mod:`entropyctl.config.loading` (a run's config from its file and ``--set``
overrides, errors told against them); the error type and formatting are in :mod:`entropyctl.validation`
(every layer uses them), controller configs live with their controllers
(:mod:`entropyctl.controllers.config`, the registry parses them). Every public name stays importable
from here.
"""

from __future__ import annotations

from typing import Any

from entropyctl.config.loading import load_run_config, suggest_field
from entropyctl.config.overrides import MAX_YAML_VALUES, apply_overrides, load_yaml
from entropyctl.config.run import (
    ABSENT_MEANS,
    LIGHTNING_ACCELERATORS,
    LIGHTNING_PRECISIONS,
    MAX_SEED,
    MIN_TRAIN_TEMPERATURE,
    VARIANT_KEYS,
    AlgorithmConfig,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    RewardConfig,
    RolloutConfig,
    RolloutCorrection,
    RunConfig,
    ShapingReward,
    TrainerConfig,
    default_config_path,
    drop_other_variant,
    fill_absent,
    parse_run_config,
    parse_written_config,
)
from entropyctl.controllers.config import ControllerConfig
from entropyctl.controllers.registry import ControllerField, parse_controller_config
from entropyctl.validation import ConfigError, NonNegativeFloat, PositiveFloat, format_validation_error

__all__ = [
    "ABSENT_MEANS",
    "LIGHTNING_ACCELERATORS",
    "LIGHTNING_PRECISIONS",
    "MAX_SEED",
    "MAX_YAML_VALUES",
    "MIN_TRAIN_TEMPERATURE",
    "AlgorithmConfig",
    "ConfigError",
    "ControllerConfig",
    "ControllerField",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "NonNegativeFloat",
    "OptimConfig",
    "PositiveFloat",
    "RewardConfig",
    "ShapingReward",
    "RolloutConfig",
    "RolloutCorrection",
    "RunConfig",
    "TrainerConfig",
    "VARIANT_KEYS",
    "apply_overrides",
    "default_config_path",
    "drop_other_variant",
    "fill_absent",
    "format_validation_error",
    "load_run_config",
    "load_yaml",
    "parse_controller_config",
    "parse_run_config",
    "parse_written_config",
    "suggest_field",
]


#: Controller configs live with their controllers (entropyctl.controllers.*); these names stay
#: importable from here for code written against the first release.
_MOVED = {
    "FixedConfig": "entropyctl.controllers.fixed",
    "ClipHigherConfig": "entropyctl.controllers.clip_higher",
    "TargetConfig": "entropyctl.controllers.target",
    "AERConfig": "entropyctl.controllers.aer",
    **{
        name: "entropyctl.controllers.parts"
        for name in (
            "RelativeUpdate",
            "AdditiveUpdate",
            "SignUpdate",
            "LogUpdate",
            "NoUpdate",
            "InitialAnchor",
            "AbsoluteAnchor",
            "ThresholdAllocation",
            "LinearAllocation",
            "UniformAllocation",
        )
    },
}


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
