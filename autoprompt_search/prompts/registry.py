"""The registry of prompt methods: each method registers itself next to its code, as peft's
tuners do (`@register_method("deep", DeepConfig)` on the module class)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from .base import PromptMethod

M = TypeVar("M", bound="type[PromptMethod]")


@dataclass(frozen=True)
class MethodEntry:
    name: str
    config_class: type  # the method's options (a dataclass with `check(info)`)
    module_class: type[PromptMethod]  # the nn.Module the engine runs


METHODS: dict[str, MethodEntry] = {}  # name -> entry, in registration order


def register_method(name: str, config_class: type) -> Callable[[M], M]:
    """Class decorator: register a PromptMethod subclass under `name` with its config class."""

    def register(module_class: M) -> M:
        if name in METHODS and METHODS[name].module_class is not module_class:
            raise ValueError(f"prompt method {name!r} is registered twice")
        module_class.name, module_class.config_class = name, config_class
        METHODS[name] = MethodEntry(name, config_class, module_class)
        return module_class

    return register
