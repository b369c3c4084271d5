"""The registry of prompt methods: each method registers itself next to its code, as peft's
tuners do (`@register_method("deep", DeepConfig)` on the module class, which then carries its
`name` and `config_class`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from autoprompt_search.methods.base import PromptMethod

M = TypeVar("M", bound="type[PromptMethod]")

METHODS: dict[str, type[PromptMethod]] = {}  # name -> the method's module class, in registration order


def register_method(name: str, config_class: type) -> Callable[[M], M]:
    """Class decorator: register a PromptMethod subclass under `name`, taking options of
    `config_class` (a dataclass with `check(info)`)."""

    def register(module_class: M) -> M:
        if name in METHODS and METHODS[name] is not module_class:
            raise ValueError(f"prompt method {name!r} is registered twice")
        module_class.name, module_class.config_class = name, config_class
        METHODS[name] = module_class
        return module_class

    return register
