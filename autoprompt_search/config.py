"""The full configuration of one trial: model, data, method, head and training recipe.

Loaded from JSON/YAML with safe loaders only; every field is validated on construction and
errors name the field (`train.lr: ...`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autoprompt_search.data import DataConfig
from autoprompt_search.dataclass_io import from_dict, to_dict
from autoprompt_search.engine.heads import HeadConfig
from autoprompt_search.errors import ConfigError, require
from autoprompt_search.methods import DeepConfig, method_from_dict, method_to_dict

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    steps: int = 300
    epochs: float = 0.0  # > 0: train this many passes over the training set instead (steps derived from it)
    lr: float = 1e-2
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06  # linear warmup over this fraction of steps, then linear decay to 0
    batch_size: int = 32
    eval_batch_size: int = 128
    eval_every: int = 0  # 0 = every steps // 5
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    seed: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto = bf16 autocast on GPU, fp32 on CPU
    prefix_cache: bool = True  # reuse the frozen blocks' output below the first prompted layer
    prefix_cache_gb: float = 20.0  # disk limit of the cache directory; least recently used goes first

    def __post_init__(self) -> None:
        require(self.steps > 0, f"train.steps: must be > 0, got {self.steps}")
        require(self.epochs >= 0, f"train.epochs: must be >= 0 (0 = use train.steps), got {self.epochs}")
        require(self.lr > 0, f"train.lr: must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, f"train.weight_decay: must be >= 0, got {self.weight_decay}")
        require(0 <= self.warmup_ratio < 1, f"train.warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        require(self.batch_size > 0, f"train.batch_size: must be > 0, got {self.batch_size}")
        require(self.eval_batch_size > 0, f"train.eval_batch_size: must be > 0, got {self.eval_batch_size}")
        require(self.eval_every >= 0, f"train.eval_every: must be >= 0 (0 = steps // 5), got {self.eval_every}")
        require(self.grad_clip >= 0, f"train.grad_clip: must be >= 0 (0 = off), got {self.grad_clip}")
        require(self.prefix_cache_gb > 0, f"train.prefix_cache_gb: must be > 0, got {self.prefix_cache_gb}")
        require(
            self.precision in PRECISIONS, f"train.precision: {self.precision!r} unknown; use {', '.join(PRECISIONS)}"
        )

    @property
    def eval_interval(self) -> int:
        return evaluation_interval(self.eval_every, self.steps)


def evaluation_interval(eval_every: int, steps: int) -> int:
    """Steps between evaluations: `eval_every`, or 0 = five evaluations over `steps`."""
    return eval_every or max(1, steps // 5)


@dataclass
class ExperimentConfig:
    model: str = "minilm-l6"  # packaged name, local directory or hub id
    data: DataConfig = field(default_factory=DataConfig)
    method: Any = field(default_factory=DeepConfig)  # a method config dataclass (see prompts.METHODS)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.head.pooling == "first":  # a live first slot in every row: prompts before the input
            m = self.method
            require(
                isinstance(m, DeepConfig) and m.form == "hidden" and m.position == "prefix" and m.layers[0] == 0,
                "head.pooling: first reads an input prompt's first slot; use it with method deep, form hidden, "
                "position prefix and layer 0 (or use token or mean)",
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "data": to_dict(self.data),
            "method": method_to_dict(self.method),
            "head": to_dict(self.head),
            "train": to_dict(self.train),
        }

    @staticmethod
    def from_dict(data: Any) -> ExperimentConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"config: expected a mapping at the top, got {type(data).__name__}")
        known = {"model", "data", "method", "head", "train"}
        unknown = sorted(set(data) - known)
        require(not unknown, f"config.{unknown[0] if unknown else ''}: unknown section; use {', '.join(sorted(known))}")
        return ExperimentConfig(
            model=str(data.get("model", "minilm-l6")),
            data=from_dict(DataConfig, data.get("data", {}), "data"),
            method=method_from_dict(data.get("method", {"name": "deep"})),
            head=from_dict(HeadConfig, data.get("head", {}), "head"),
            train=from_dict(TrainConfig, data.get("train", {}), "train"),
        )


DATA_PATHS = ("data_dir", "train_file", "dev_file", "test_file")


def absolute_paths(experiment: dict[str, Any]) -> dict[str, Any]:
    """The experiment (as a dict) with relative local paths made absolute against the current directory.

    Ray workers run in other directories (and on other nodes of a shared file system), so a
    study or comparison pins `--data-dir ../data` to what it meant where the command was typed.
    """
    out = dict(experiment)
    data = dict(out.get("data") or {})
    for key in DATA_PATHS:
        if data.get(key):
            data[key] = os.path.normpath(Path(data[key]).expanduser().absolute())
    if data:
        out["data"] = data
    model = out.get("model")
    if isinstance(model, str) and model and Path(model).expanduser().exists():
        out["model"] = os.path.normpath(Path(model).expanduser().absolute())
    return out


def load_config_file(path: str | Path) -> ExperimentConfig:
    """An experiment from YAML or JSON (safe loaders only); a `config:` key may wrap it."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config: {str(p)!r} is a directory; give a YAML or JSON file (e.g. an exported config.yaml)")
    if not p.is_file():
        raise ConfigError(f"config: file {str(p)!r} does not exist; check the path")
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0]
        kind = "JSON" if p.suffix == ".json" else "YAML"
        fix = "fix the file" if kind == "JSON" else "write plain YAML (tags such as !!python/... are never loaded)"
        raise ConfigError(f"config: {p} is not valid {kind} ({first}); {fix}") from exc
    if isinstance(data, dict) and "config" in data and isinstance(data["config"], dict):
        data = data["config"]
    return ExperimentConfig.from_dict(data)
