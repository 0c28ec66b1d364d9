"""What every config shares: :class:`ConfigError`, pydantic errors as one readable line per problem,
constrained number types. The lowest layer (pydantic only): controllers, models and the run config use it.

Every error is reported as one line per problem, ``<field path>: <what is expected> (got <value>)``,
e.g. ``controller.alpha_0: must be ≤ alpha_max = 0.05 (got 0.5)``, wrapped in :class:`ConfigError`.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any

from pydantic import BaseModel, Field, ValidationError

__all__ = [
    "ConfigError",
    "NonNegativeFloat",
    "PositiveFloat",
    "format_validation_error",
    "keyword_options",
    "unknown_option",
    "first_repeated",
]

NonNegativeFloat = Annotated[float, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


def first_repeated(items: Sequence[Any]) -> Any | None:
    """The first item that appears again later in ``items`` (None: all distinct), for "listed twice"."""
    seen: list[Any] = []
    for item in items:
        if item in seen:
            return item
        seen.append(item)
    return None


class ConfigError(ValueError):
    """A configuration problem. ``errors`` holds one ``"<path>: <message>"`` line per problem."""

    def __init__(self, errors: str | Sequence[str], *, source: str | None = None) -> None:
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        self.source = source
        head = f"invalid configuration in {source}:" if source else "invalid configuration:"
        if len(self.errors) == 1 and not source:
            super().__init__(self.errors[0])
        else:
            super().__init__("\n  ".join([head, *self.errors]))


_FIELD_PREFIXED = re.compile(r"^([A-Za-z_][\w.]*): (.*)$", re.DOTALL)


def _loc_to_path(prefix: str, loc: Iterable[Any]) -> str:
    parts = [prefix] if prefix else []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        else:
            parts.append(str(item))
    return ".".join(parts) if parts else "<root>"


def _number(value: Any) -> str:
    # 1.0 → "1", 0.05 → "0.05": bounds read as the user wrote them.
    return f"{value:g}" if isinstance(value, float) else str(value)


def _describe(error: Mapping[str, Any], model: type[BaseModel] | None) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "greater_than_equal":
        return f"must be ≥ {_number(ctx['ge'])}"
    if kind == "greater_than":
        return f"must be > {_number(ctx['gt'])}"
    if kind == "less_than_equal":
        return f"must be ≤ {_number(ctx['le'])}"
    if kind == "less_than":
        return f"must be < {_number(ctx['lt'])}"
    if kind == "finite_number":
        return "must be a finite number"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '?')}"
    if kind == "union_tag_invalid":
        return f"must be one of {ctx.get('expected_tags', '?')}"
    if kind == "extra_forbidden":
        if model is not None:
            valid = ", ".join(model.model_fields)
            return f"unknown field (valid fields: {valid})"
        return "unknown field"
    msg = str(error["msg"])
    for noise in ("Value error, ", "Assertion failed, "):
        if msg.startswith(noise):
            msg = msg[len(noise) :]
    return msg


def format_validation_error(
    error: ValidationError,
    prefix: str = "",
    model: type[BaseModel] | None = None,
    parts: Mapping[str, Mapping[str, type[BaseModel]]] | None = None,
) -> list[str]:
    """One ``"<path>: <message> (got <value>)"`` line per pydantic error.

    ``prefix`` is the path of the validated object inside the whole config (``"controller"``).
    Model-level validators in this module raise ``ValueError("<field>: <message>")``; their field
    name is moved into the path. ``parts``: nested tagged parts (field → {tag: model}, e.g. a controller's
    ``update`` rules), whose tag pydantic puts in the path and the user did not write.
    """
    parts = parts or {}
    lines = []
    for err in error.errors(include_url=False):
        loc = list(err["loc"])
        part_model: type[BaseModel] | None = None
        # A nested controller part (update / anchor / allocation): pydantic puts the variant's tag
        # in the path (``update.relative.step``); the user wrote ``update.step``.
        for i in range(len(loc) - 1):
            variants = parts.get(str(loc[i]), {})
            if isinstance(loc[i + 1], str) and loc[i + 1] in variants:
                part_model = variants[str(loc[i + 1])]
                del loc[i + 1]
                break
        if part_model is not None and len(loc) >= 2 and str(loc[-2]) in parts:
            message = _describe(err, part_model)
        else:
            message = _describe(err, model if len(loc) == 1 else None)
        match = _FIELD_PREFIXED.match(message)
        if match and err["type"] == "value_error":
            loc.append(match.group(1))
            message = match.group(2)
            path = _loc_to_path(prefix, loc)
            lines.append(f"{path}: {message}")
            continue
        path = _loc_to_path(prefix, loc)
        got = err.get("input")
        if err["type"] in ("missing",) or isinstance(got, Mapping):
            lines.append(f"{path}: {message}")
        else:
            lines.append(f"{path}: {message} (got {got!r})")
    return lines


def keyword_options(factory: Callable[..., Any], *, skip: int = 0) -> list[str] | None:
    """The keyword arguments ``factory`` takes after its first ``skip`` parameters (the options a config
    section passes it); None: any (it takes ``**kwargs``)."""
    parameters = list(inspect.signature(factory).parameters.values())[skip:]
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def unknown_option(key: str, accepted: Sequence[str], owner: str) -> str:
    """Why option ``key`` is refused: ``unknown option of <owner>; did you mean <closest>? (it takes: ...)``."""
    close = difflib.get_close_matches(key, list(accepted), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    takes = ", ".join(accepted) if accepted else "no options"
    return f"unknown option of {owner}{hint} (it takes: {takes})"
