"""Reading config files: strict YAML (duplicate keys and alias bombs refused) and ``key=value`` overrides."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from entropyctl.controllers.parts import drop_other_spelling
from entropyctl.validation import ConfigError

__all__ = ["MAX_YAML_VALUES", "apply_overrides", "load_yaml"]


class _DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first_line: int) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line, self.first_line = key, line, first_line


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader where a key repeated in one mapping is an error (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKeyError(key, line, seen[key])
                seen[key] = line
            except TypeError:  # an unhashable key: SafeLoader reports it below
                pass
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) reads a float without a dot, ``1e-3`` or ``5e0``, as a string; YAML 1.2 and users
# mean a number: anywhere in a file or a --set value (``[1e-3, 2]``, ``{timeout: 5e0}``), not only alone.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


#: At most this many values once every alias is expanded. A config has hundreds; the 547-byte
#: "billion laughs" file expands to 10^9 (aliases share one object in memory, but writing or
#: validating the config walks every expansion).
MAX_YAML_VALUES = 100_000


def _check_expanded_size(data: Any, path: Path) -> None:
    count, stack = 0, [data]
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            raise ConfigError(
                f"{path}: the YAML expands to more than {MAX_YAML_VALUES:,} values "
                "(aliases of aliases, e.g. a 'billion laughs' file); write the values out instead"
            )
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping (an empty file gives ``{}``).

    Errors name the file and line: ``run.yaml:3: mapping values are not allowed here``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file ({err.strerror or err})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
        _check_expanded_size(data, path)
    except _DuplicateKeyError as err:
        raise ConfigError(
            f"{path}:{err.line}: duplicate key {err.key!r} (first at line {err.first_line})"
        ) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: invalid YAML: {err.problem}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping (got {type(data).__name__})")
    return data


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _parse_scalar(text: str) -> Any:
    # YAML 1.1 reads "1e-3" as a string; users mean a number.
    if _NUMBER.match(text.strip()):
        # int(text), not int(float(text)): 12345678901234567 stays exact.
        return int(text.strip()) if re.match(r"^[+-]?\d+$", text.strip()) else float(text)
    try:
        return yaml.load(text, Loader=_StrictLoader) if text.strip() else ""  # noqa: S506 - a SafeLoader
    except yaml.YAMLError:
        return text


def apply_overrides(
    data: Mapping[str, Any], overrides: Iterable[str], *, text: Callable[[str], bool] | None = None
) -> dict[str, Any]:
    """Return a deep copy of ``data`` with ``"a.b.c=value"`` overrides applied.

    Values are parsed as YAML scalars (``true``, ``0.3``, ``1e-3``, ``[1, 2]``, ``null``);
    missing intermediate mappings are created. ``text(key)``: the field at ``key`` is a string, so a
    value YAML reads as something else (``Q: {prompt}`` is a mapping, ``2024`` a number) is the text as
    written (``null`` stays None).
    """
    result: dict[str, Any] = copy.deepcopy(dict(data))
    for override in overrides:
        key, sep, raw = override.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(
                f"override {override!r}: expected KEY=VALUE with a dotted KEY, e.g. controller.tau=0.5"
            )
        node: dict[str, Any] = result
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {override!r}: {where} is not a mapping (it is {child!r})")
            node = child
        value = _parse_scalar(raw)
        if value is not None and not isinstance(value, str) and text is not None and text(key):
            value = raw
        node[parts[-1]] = value
        if parts[0] == "controller" and len(parts) > 1 and isinstance(result.get("controller"), dict):
            drop_other_spelling(result["controller"], parts[1:])  # the override wins over either form
    return result
