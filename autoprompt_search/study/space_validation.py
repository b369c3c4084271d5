"""A search-space file's validation: every problem at once, each one line naming the key and the fix."""

from __future__ import annotations

import dataclasses
from typing import Any

from autoprompt_search.config import TrainConfig
from autoprompt_search.engine.heads import HeadConfig
from autoprompt_search.errors import ConfigError
from autoprompt_search.methods import METHODS

KINDS = ("int", "float", "categorical", "layer", "layer_set")
KIND_KEYS = {
    "int": {"type", "low", "high", "log", "step"},
    "float": {"type", "low", "high", "log"},
    "categorical": {"type", "choices"},
    "layer": {"type", "depth"},
    "layer_set": {"type", "depth", "min_layers", "max_layers"},
}
TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)} - {"device", "eval_every", "eval_batch_size"}
HEAD_KEYS = {f.name for f in dataclasses.fields(HeadConfig)} - {"label_words"}
SECTIONS = ("methods", "train", "head")


def _check_dimension(path: str, spec: Any, problems: list[str]) -> None:
    if not isinstance(spec, dict):
        return  # a fixed value
    kind = spec.get("type")
    if kind not in KINDS:
        problems.append(f"{path}.type: {kind!r} unknown; use one of {', '.join(KINDS)}")
        return
    unknown = sorted(set(spec) - KIND_KEYS[kind])
    if unknown:
        problems.append(f"{path}.{unknown[0]}: unknown key for type {kind}; use {', '.join(sorted(KIND_KEYS[kind]))}")
    if kind in ("int", "float"):
        low, high = spec.get("low"), spec.get("high")
        if not isinstance(low, (int, float)) or not isinstance(high, (int, float)):
            problems.append(f"{path}: {kind} needs numeric low and high")
        elif low > high:
            problems.append(f"{path}: empty range low={low} > high={high}")
        elif spec.get("log") and low <= 0:
            problems.append(f"{path}: log scale needs low > 0, got {low}")
    elif kind == "categorical":
        if not isinstance(spec.get("choices"), list) or not spec["choices"]:
            problems.append(f"{path}.choices: needs a non-empty list")
    else:
        depth = spec.get("depth", [0.0, 1.0])
        if not (isinstance(depth, list) and len(depth) == 2 and all(isinstance(x, (int, float)) for x in depth)):
            problems.append(f"{path}.depth: needs [low, high] fractions of the model depth")
        elif not 0.0 <= depth[0] <= depth[1] <= 1.0:
            problems.append(f"{path}.depth: {depth} must satisfy 0 <= low <= high <= 1")
        if kind == "layer_set":
            lo, hi = spec.get("min_layers", 1), spec.get("max_layers")
            if not isinstance(lo, int) or lo < 1:
                problems.append(f"{path}.min_layers: must be an integer >= 1")
            elif hi is not None and (not isinstance(hi, int) or hi < lo):
                problems.append(f"{path}.max_layers: must be an integer >= min_layers ({lo})")


def _check_bounds(method: str, name: str, spec: Any, problems: list[str]) -> None:
    """A value the method's own config refuses on its own (a length of -5, a negative bottleneck):
    fixed values, range ends and choices, each checked by building the config with it. Only
    refusals of the value's own bounds count; combinations with other options are checked when a
    trial is built."""
    if isinstance(spec, dict):
        values = spec.get("choices") if spec.get("type") == "categorical" else [spec.get("low"), spec.get("high")]
        if spec.get("type") not in ("int", "float", "categorical") or not isinstance(values, list):
            return
    else:
        values = [spec]
    for value in values:
        try:
            METHODS[method].config_class(**{name: value})
        except ConfigError as exc:
            if str(exc).startswith(f"method.{name}: must be"):
                problems.append(f"methods.{method}.{name}: {value!r} is out of bounds ({str(exc).split(': ', 1)[1]})")
                return
        except (TypeError, ValueError):
            return


def validate(data: Any) -> list[str]:
    """Every problem in a search-space mapping, as one-line strings naming the key and the fix."""
    if not isinstance(data, dict):
        return ["the file must be a mapping with `methods:` (and optionally `train:` and `head:`)"]
    problems = [f"{k}: unknown section; use methods, train or head" for k in sorted(set(data) - set(SECTIONS))]
    methods = data.get("methods")
    if not isinstance(methods, dict) or not methods:
        problems.append("methods: needs at least one method, e.g. `methods: {deep: {}}`")
        methods = {}
    for method, options in methods.items():
        if method not in METHODS:
            problems.append(f"methods.{method}: unknown method; use one of {', '.join(METHODS)}")
            continue
        if options is None:
            continue
        if not isinstance(options, dict):
            problems.append(f"methods.{method}: needs a mapping of options")
            continue
        fields = {f.name for f in dataclasses.fields(METHODS[method].config_class)}
        for name, spec in options.items():
            if name == "train":  # this method's own recipe dimensions, over the shared `train:`
                _check_train(f"methods.{method}.train", spec, problems)
                continue
            if name not in fields:
                owner = [m for m, c in METHODS.items() if name in {f.name for f in dataclasses.fields(c.config_class)}]
                hint = f" (it is a {owner[0]} option: put it under methods.{owner[0]})" if owner else ""
                problems.append(f"methods.{method}.{name}: not a {method} option{hint}")
                continue
            _check_dimension(f"methods.{method}.{name}", spec, problems)
            _check_bounds(method, name, spec, problems)
            kind = spec.get("type") if isinstance(spec, dict) else None
            if name == "layers" and kind not in (None, "layer_set"):
                problems.append(f"methods.{method}.layers: use type layer_set (one boolean per layer)")
            if name == "layer" and kind not in (None, "layer", "int"):
                problems.append(f"methods.{method}.layer: use type layer (a depth fraction range)")
    _check_train("train", data.get("train") or {}, problems)
    _check_options("head", data.get("head") or {}, HEAD_KEYS, "head options", problems)
    return problems


def _check_train(path: str, train: Any, problems: list[str]) -> None:
    _check_options(path, train, TRAIN_KEYS, "training options", problems)


def _check_options(path: str, options: Any, known: set[str], what: str, problems: list[str]) -> None:
    if not isinstance(options, dict):
        problems.append(f"{path}: needs a mapping of {what}")
        return
    for name, spec in options.items():
        if name not in known:
            problems.append(f"{path}.{name}: unknown; use one of {', '.join(sorted(known))}")
        else:
            _check_dimension(f"{path}.{name}", spec, problems)
