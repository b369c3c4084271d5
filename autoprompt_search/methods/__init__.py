"""Prompt methods, registered by name next to their code (`registry.py`); `probe` is the head-only linear probe."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from autoprompt_search.backbones import BackboneInfo
from autoprompt_search.dataclass_io import from_dict, to_dict
from autoprompt_search.errors import ConfigError
from autoprompt_search.methods.base import BatchContext, PromptMethod, SlotLayout
from autoprompt_search.methods.registry import METHODS, register_method

# Importing a method's module registers it; this order is the order users see.
# isort: off
from autoprompt_search.methods.probe import LinearProbe, ProbeConfig
from autoprompt_search.methods.deep import DeepConfig, DeepPrompt
from autoprompt_search.methods.late import LateConfig, LatePrompt
from autoprompt_search.methods.spt import SelectivePrompt, SptConfig
from autoprompt_search.methods.dp import DpConfig, DynamicPrompt
# isort: on

# A new method is one file in this folder: every module here but these support modules registers
# by being imported (after the ones above, whose order users see in messages).
SUPPORT_MODULES = {"base", "registry", "noise", "spt_search"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in SUPPORT_MODULES:
        importlib.import_module(f"{__name__}.{_module.name}")


def method_config(name: str, options: dict[str, Any] | None = None) -> Any:
    """Validated config of method `name` from a plain dict of its options."""
    if name not in METHODS:
        raise ConfigError(f"method: {name!r} unknown; use one of {', '.join(METHODS)}")
    options = dict(options or {})
    if "split" in options and "split_at" not in options:  # configs written before the rename
        options["split_at"] = options.pop("split")
    return from_dict(METHODS[name].config_class, options, "method")


def method_name(config: Any) -> str:
    for method in METHODS.values():
        if isinstance(config, method.config_class):
            return method.name
    raise ConfigError(f"method: no method takes a {type(config).__name__}")


def build_method(config: Any, info: BackboneInfo) -> PromptMethod:
    """The method module for `config`, validated against the backbone."""
    config.check(info)
    return METHODS[method_name(config)](config, info)


def method_to_dict(config: Any) -> dict[str, Any]:
    return {"name": method_name(config), **to_dict(config)}


def method_from_dict(data: dict[str, Any]) -> Any:
    data = dict(data)
    name = data.pop("name", None)
    if name is None:
        raise ConfigError("method.name: missing; use one of " + ", ".join(METHODS))
    return method_config(name, data)


__all__ = [
    "METHODS",
    "BatchContext",
    "DeepConfig",
    "DeepPrompt",
    "DpConfig",
    "DynamicPrompt",
    "LateConfig",
    "LatePrompt",
    "LinearProbe",
    "ProbeConfig",
    "PromptMethod",
    "SelectivePrompt",
    "SlotLayout",
    "SptConfig",
    "build_method",
    "method_config",
    "method_from_dict",
    "method_name",
    "method_to_dict",
    "register_method",
]
