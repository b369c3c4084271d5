"""Prompt methods, registered by name. `probe` means no prompt at all (head-only linear probe)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..backbones import BackboneInfo
from ..dataclass_io import from_dict, to_dict
from ..errors import ConfigError
from .base import BatchContext, PromptMethod, SlotLayout
from .deep import DeepConfig, DeepPrompt, prompt_tuning, ptuning_v2
from .dynamic import DpConfig, DynamicPrompt
from .late import LateConfig, LatePrompt
from .selective import SelectivePrompt, SptConfig


@dataclass
class ProbeConfig:
    """No prompt: the frozen model and a trained head (the linear-probe baseline)."""

    def check(self, info: BackboneInfo) -> None:
        return None


METHODS: dict[str, tuple[type, type[PromptMethod] | None]] = {
    "probe": (ProbeConfig, None),
    "deep": (DeepConfig, DeepPrompt),
    "late": (LateConfig, LatePrompt),
    "spt": (SptConfig, SelectivePrompt),
    "dp": (DpConfig, DynamicPrompt),
}


def method_config(name: str, options: dict[str, Any] | None = None) -> Any:
    """Validated config of method `name` from a plain dict of its options."""
    if name not in METHODS:
        raise ConfigError(f"method: {name!r} unknown; use one of {', '.join(METHODS)}")
    return from_dict(METHODS[name][0], options or {}, "method")


def method_name(config: Any) -> str:
    for name, (config_class, _) in METHODS.items():
        if isinstance(config, config_class):
            return name
    raise ConfigError(f"method: no method takes a {type(config).__name__}")


def build_method(config: Any, info: BackboneInfo) -> PromptMethod | None:
    """The method module for `config`, validated against the backbone (None for `probe`)."""
    config.check(info)
    module_class = METHODS[method_name(config)][1]
    return None if module_class is None else module_class(config, info)


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
    "prompt_tuning",
    "ptuning_v2",
]
