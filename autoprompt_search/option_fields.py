"""One declaration per option: a dataclass field whose metadata says how a user sets it.

`option(...)` declares a field with its help text, its command-line spellings, the `--help`
panel it shows in, the commands that take it and, for an experiment option, the path of the
config value it sets (`train.steps`). The command line (`cli/declared.py`), the Python API's
signatures (`api_signature`) and the config files are derived from these fields, so adding an
option is one edit.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

EVERY_RUN_COMMAND = ("train", "search", "compare")  # the commands that build an experiment


@dataclass(frozen=True)
class Flag:
    """How a user sets one option (a dataclass field's `metadata["flag"]`)."""

    help: str
    panel: str  # the --help panel: Data, Method, Head, Recipe, Study, Resources, Ray
    names: tuple[str, ...] = ()  # command-line spellings; () = --field-name
    commands: tuple[str, ...] = EVERY_RUN_COMMAND
    config: str = ""  # the experiment value it sets ("train.steps"); "" = none, or set by code
    cli_type: Any = None  # what a user gives when it is not the field's type (files for dicts, a count for seeds)


def option(
    default: Any = None,
    help: str = "",
    panel: str = "",
    *,
    names: tuple[str, ...] = (),
    commands: tuple[str, ...] = EVERY_RUN_COMMAND,
    config: str = "",
    factory: Callable[[], Any] | None = None,
    cli_type: Any = None,
) -> Any:
    """A dataclass field that is an option (see the module doc)."""
    metadata = {"flag": Flag(help, panel, names, commands, config, cli_type)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def flag_of(f: Field) -> Flag | None:
    return f.metadata.get("flag")


def declared(cls: type, command: str) -> list[tuple[Field, Flag]]:
    """The fields of `cls` that `command` takes as options, in declaration order."""
    return [(f, flag) for f in fields(cls) if (flag := flag_of(f)) is not None and command in flag.commands]


def cli_names(f: Field, flag: Flag) -> tuple[str, ...]:
    return flag.names or ("--" + f.name.replace("_", "-"),)


def field_type(cls: type, f: Field) -> Any:
    """A field's annotation as a type (the modules use `from __future__ import annotations`)."""
    return typing.get_type_hints(cls)[f.name]


def field_default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def api_signature(
    head: Callable[..., Any], sources: list[tuple[type, str]], skip: tuple[str, ...] = ()
) -> inspect.Signature:
    """`head`'s own parameters followed by every option `sources` declare (class, command) as typed
    keyword-only parameters: what `inspect.signature` (help(), IDE consoles) shows for an API
    function that takes them as `**options`."""
    own = [p for p in inspect.signature(head).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    taken = {p.name for p in own} | set(skip)
    params = list(own)
    for cls, command in sources:
        for f, flag in declared(cls, command):
            if f.name in taken:
                continue
            taken.add(f.name)
            annotation = flag.cli_type or field_type(cls, f)
            default = None if flag.cli_type else field_default(f)
            params.append(
                inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
            )
    return inspect.Signature(params, return_annotation=inspect.signature(head).return_annotation)
