"""Typer options generated from the declared option fields (autoprompt_search/option_fields.py).

`@declared_options("search", StudyOptions, ExperimentOptions)` on a command whose signature ends in
`**options` gives it one `--flag` per field those classes declare for "search", in the field's
--help panel, with its help text and default shown; the command receives the options the user
gave (never the unset ones) in `options`.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import Field
from typing import Annotated, Any, Optional

import typer

from autoprompt_search.option_fields import Flag, cli_names, declared, field_default, field_type


def _cli_type(cls: type, f: Field, flag: Flag) -> Any:
    """The type the command line parses: the field's, without None."""
    kind = flag.cli_type or field_type(cls, f)
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    return kind


def shown_default(cls: type, f: Field, flag: Flag) -> str | bool:
    """The default --help shows: an experiment option's embedded default, a study option's own."""
    if flag.config:
        from autoprompt_search.experiment_options import default_shown

        return default_shown(flag.config) or False
    value = field_default(f)
    if value in (None, "", [], ()) or flag.cli_type is not None:
        return False
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def option_parameters(command: str, sources: tuple[type, ...]) -> list[inspect.Parameter]:
    """One keyword parameter per declared option of `command` (default None: not given)."""
    params, seen = [], set()
    for cls in sources:
        for f, flag in declared(cls, command):
            if f.name in seen:
                continue
            seen.add(f.name)
            info = typer.Option(
                *cli_names(f, flag),
                help=flag.help,
                rich_help_panel=flag.panel,
                show_default=shown_default(cls, f, flag),
            )
            annotation = Annotated[Optional[_cli_type(cls, f, flag)], info]
            params.append(
                inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
            )
    return params


def declared_options(command: str, *sources: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a Typer command the options `sources` declare for `command` (see the module doc)."""

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(func).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        own_names = {p.name for p in own}
        generated = [p for p in option_parameters(command, sources) if p.name not in own_names]

        @functools.wraps(func)
        def command_function(**values: Any) -> Any:
            mine = {k: v for k, v in values.items() if k in own_names}
            given = {k: v for k, v in values.items() if k not in own_names and v is not None}
            return func(**mine, **given)

        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in inspect.signature(func, eval_str=True).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        params = own + generated
        command_function.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        # typer also reads the annotations: the evaluated ones (func's are strings of its own module)
        command_function.__annotations__ = {p.name: p.annotation for p in params}
        del command_function.__wrapped__  # typer must read the signature above, not func's
        return command_function

    return wrap
