"""Dataclass <-> plain dict (JSON/YAML) conversion that rejects unknown keys by name."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

from autoprompt_search.errors import ConfigError

T = TypeVar("T")


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain, JSON-safe dict of a (nested) dataclass; tuples become lists."""
    return _plain(dataclasses.asdict(obj))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


SCALARS = (int, float, str, bool)


def _is_a(value: Any, hint: type) -> bool:
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from `data`; `where` prefixes field names in errors (e.g. 'method')."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown field; known fields are {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if hint in SCALARS and not _is_a(value, hint):
            raise ConfigError(f"{where}.{name}: expected {hint.__name__}, got {value!r}")
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value, f"{where}.{name}")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
