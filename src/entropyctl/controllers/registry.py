"""The controller registry: name → (controller class, config class), like timm's model registry.

Built-in controllers register with ``@register_controller("name")`` when their module is imported.
Third-party controllers register through the entry-point group ``entropyctl.controllers``::

    [project.entry-points."entropyctl.controllers"]
    mine = "my_package.module:MyController"

Entry points are discovered lazily, on the first lookup. A name claimed twice is an error that
names both owners (``module.Class`` of each).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Annotated, Any, TypeVar, Union, get_args

from pydantic import Field, GetCoreSchemaHandler, ValidationError
from pydantic_core import core_schema

from entropyctl.controllers.base import EntropyController
from entropyctl.controllers.config import ControllerConfig
from entropyctl.controllers.parts import PART_VARIANTS, drop_other_spelling
from entropyctl.validation import ConfigError, format_validation_error

__all__ = [
    "ENTRY_POINT_GROUP",
    "RegistryError",
    "register_controller",
    "create_controller",
    "available_controllers",
    "get_controller_class",
    "get_config_class",
    "controller_config_union",
    "parse_controller_config",
    "ControllerField",
]

ENTRY_POINT_GROUP = "entropyctl.controllers"

_BUILTIN_MODULES = (
    "entropyctl.controllers.fixed",
    "entropyctl.controllers.clip_higher",
    "entropyctl.controllers.target",
    "entropyctl.controllers.aer",
    "entropyctl.controllers.token_level",
)


class RegistryError(RuntimeError):
    """A registration problem: a duplicate name, a bad controller class or a broken plugin."""


@dataclass(frozen=True)
class _Entry:
    controller_class: type[EntropyController]
    config_class: type[ControllerConfig]
    owner: str
    description: str


_registry: dict[str, _Entry] = {}
_lock = threading.RLock()
_discovered = False
_discovering = False

C = TypeVar("C", bound=type[EntropyController])


def _owner(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _description(cls: type) -> str:
    text = getattr(cls, "description", None) or (cls.__doc__ or "").strip()
    return text.splitlines()[0].strip() if text else ""


def _add(
    name: str, cls: type[EntropyController], config_class: type[ControllerConfig] | None, owner: str
) -> None:
    if not isinstance(cls, type) or not issubclass(cls, EntropyController):
        raise RegistryError(f"controller {name!r} ({owner}) must subclass entropyctl.EntropyController")
    config_class = config_class or getattr(cls, "config_class", None)
    if not (isinstance(config_class, type) and issubclass(config_class, ControllerConfig)):
        raise RegistryError(
            f"controller {name!r} ({owner}) needs a config class deriving from "
            "entropyctl.config.ControllerConfig (set `config_class` or pass config=...)"
        )
    field = config_class.model_fields.get("name")
    literal = get_args(field.annotation) if field is not None else ()
    if literal != (name,):
        raise RegistryError(
            f"controller {name!r} ({owner}): its config {config_class.__qualname__} must declare "
            f"`name: Literal[{name!r}] = {name!r}`"
        )
    with _lock:
        existing = _registry.get(name)
        if existing is not None:
            if existing.controller_class is cls:
                return  # the same class seen again (module imported by its entry point)
            raise RegistryError(
                f"controller name {name!r} is registered twice: by {existing.owner} and by {owner}"
            )
        cls.name = name
        cls.config_class = config_class
        _registry[name] = _Entry(cls, config_class, owner, _description(cls))


def register_controller(name: str, *, config: type[ControllerConfig] | None = None) -> Callable[[C], C]:
    """Class decorator: ``@register_controller("mine")`` registers a controller under ``name``.

    The config class is ``config`` or the class attribute ``config_class``; it must derive from
    :class:`~entropyctl.config.ControllerConfig` and declare ``name: Literal["mine"] = "mine"``.
    """

    def decorator(cls: C) -> C:
        _add(name, cls, config, _owner(cls))
        return cls

    return decorator


def _load_builtins() -> None:
    import importlib

    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def _load_entry_points() -> None:
    seen: dict[str, str] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
        owner = f"{ep.value} (distribution {dist})"
        if ep.name in seen and seen[ep.name] != ep.value:
            raise RegistryError(
                f"controller name {ep.name!r} is registered twice: by {seen[ep.name]} and by {owner}"
            )
        seen[ep.name] = owner
        try:
            loaded = ep.load()
        except Exception as err:  # a broken plugin: say which one, and why
            raise RegistryError(
                f"cannot load controller plugin {ep.name!r} from entry point {owner}: "
                f"{type(err).__name__}: {err}"
            ) from err
        if isinstance(loaded, type) and issubclass(loaded, EntropyController):
            existing = _registry.get(ep.name)
            if existing is not None and existing.controller_class is loaded:
                continue
            if existing is not None:
                raise RegistryError(
                    f"controller name {ep.name!r} is registered twice: by {existing.owner} and by {owner}"
                )
            _add(ep.name, loaded, None, owner)
        elif ep.name not in _registry:
            raise RegistryError(
                f"controller plugin {ep.name!r} ({owner}) must point at an EntropyController subclass "
                f"or a module that registers {ep.name!r} with @register_controller"
            )


def _ensure_discovered() -> None:
    global _discovered, _discovering
    if _discovered:
        return
    with _lock:
        if _discovered or _discovering:
            return
        _discovering = True
        try:
            _load_builtins()
            _load_entry_points()
            _discovered = True
        finally:
            _discovering = False


def _lookup(name: str) -> _Entry:
    _ensure_discovered()
    try:
        return _registry[name]
    except KeyError:
        names = ", ".join(sorted(_registry))
        raise KeyError(f"unknown controller {name!r} (available: {names})") from None


def get_controller_class(name: str) -> type[EntropyController]:
    """The controller class registered under ``name`` (KeyError listing the names if unknown)."""
    return _lookup(name).controller_class


def get_config_class(name: str) -> type[ControllerConfig]:
    """The config class registered under ``name`` (KeyError listing the names if unknown)."""
    return _lookup(name).config_class


def available_controllers() -> dict[str, str]:
    """Every registered controller, built-in and plugin: name → one-line description (sorted)."""
    _ensure_discovered()
    return {name: _registry[name].description for name in sorted(_registry)}


def controller_config_union() -> Any:
    """``Annotated[Union[<every registered config>], Field(discriminator="name")]``."""
    _ensure_discovered()
    classes = tuple(_registry[name].config_class for name in sorted(_registry))
    if len(classes) == 1:
        return classes[0]
    return Annotated[Union[classes], Field(discriminator="name")]  # noqa: UP007 (runtime union)


def create_controller(
    config: ControllerConfig | Mapping[str, Any] | str, **overrides: Any
) -> EntropyController:
    """Build a controller from a config object, a mapping (``{"name": "aer", "tau": 0.5}``) or a name.

    Keyword arguments override fields: ``create_controller("aer", tau=0.5)``. Invalid input raises
    :class:`~entropyctl.config.ConfigError` naming the field.
    """
    if overrides:
        if isinstance(config, ControllerConfig):
            base: dict[str, Any] = config.model_dump()
        elif isinstance(config, str):
            base = {"name": config}
        else:
            base = copy.deepcopy(dict(config))
        merged = {**base, **overrides}
        for key in overrides:  # an override wins over the other spelling of its option, as --set's does
            drop_other_spelling(merged, key.split("."))
        config = merged
    parsed = parse_controller_config(config)
    return get_controller_class(parsed.name)(parsed)


# --------------------------------------------------------------------------------------------
# Parsing through the registry
# --------------------------------------------------------------------------------------------


def parse_controller_config(obj: Any, *, prefix: str = "controller") -> ControllerConfig:
    """Validate a controller config given as a mapping (``{"name": "aer", ...}``), a bare name, or
    an already-built config. Raises :class:`ConfigError` with lines naming the field path."""
    if isinstance(obj, ControllerConfig):
        return obj
    if isinstance(obj, str):
        obj = {"name": obj}
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{prefix}: must be a mapping with a 'name' key or a controller name (got {obj!r})")
    names = ", ".join(sorted(available_controllers()))
    name_path = f"{prefix}.name" if prefix else "name"
    if "name" not in obj:
        raise ConfigError(f"{name_path}: required field is missing (available: {names})")
    name = obj["name"]
    if not isinstance(name, str):
        raise ConfigError(f"{name_path}: must be a string (got {name!r}); available: {names}")
    try:
        cls = get_config_class(name)
    except KeyError:
        raise ConfigError(f"{name_path}: unknown controller {name!r} (available: {names})") from None
    try:
        return cls.model_validate(dict(obj))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, prefix, cls, PART_VARIANTS)) from None


def _validate_controller_field(value: Any) -> ControllerConfig:
    # Inside a larger pydantic model: re-raise as a ValidationError so pydantic prefixes the
    # location with the field name (``controller.alpha_0``).
    if isinstance(value, ControllerConfig):
        return value
    if isinstance(value, str):
        value = {"name": value}
    if isinstance(value, Mapping):
        name = value.get("name")
        try:
            cls = get_config_class(name) if isinstance(name, str) else None
        except KeyError:
            cls = None
        if cls is not None:
            return cls.model_validate(dict(value))
        names = ", ".join(sorted(available_controllers()))
        raise ValueError(f"name: unknown controller {name!r} (available: {names})")
    raise ValueError(f"must be a mapping with a 'name' key or a controller name (got {value!r})")


class _ControllerFieldSchema:
    """Pydantic hook: validation dispatches on ``name`` through the registry (plugins included);
    the JSON schema is the discriminated union of every registered config."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        union = handler.generate_schema(controller_config_union())
        return core_schema.no_info_plain_validator_function(
            _validate_controller_field,
            json_schema_input_schema=union,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda config: config.model_dump(mode="json"), when_used="always"
            ),
        )


#: The type of a run config's ``controller`` field, e.g.
#: ``controller: ControllerField = Field(default_factory=AERConfig)``.
ControllerField = Annotated[ControllerConfig, _ControllerFieldSchema()]
