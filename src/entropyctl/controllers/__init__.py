"""Entropy controllers: the API (base), the registry and the built-in controllers."""

from entropyctl.controllers.base import EntropyController, EntropyReading, GroupOutcome, Plan
from entropyctl.controllers.registry import (
    available_controllers,
    create_controller,
    get_config_class,
    get_controller_class,
    register_controller,
)

__all__ = [
    "EntropyController",
    "EntropyReading",
    "GroupOutcome",
    "Plan",
    "available_controllers",
    "create_controller",
    "get_config_class",
    "get_controller_class",
    "register_controller",
]
