"""Stages a method runs before the training loop trains it, registered by the module that
implements them (`darts.py` registers SPT-DARTS' gate search for `spt` with `search: true`).

The loop calls `before_training(cfg, ws)`: it returns the configuration to train (SPT: the
derived layer set) and metrics to add to the result. Methods stay free of training code and
the loop free of method names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .config import ExperimentConfig
from .prompts import method_name

Stage = Callable[[ExperimentConfig, Any], "tuple[ExperimentConfig, dict[str, Any]]"]
STAGES: dict[str, Stage] = {}  # method name -> its stage (it decides from the config whether to act)


def register_stage(method: str) -> Callable[[Stage], Stage]:
    def register(stage: Stage) -> Stage:
        STAGES[method] = stage
        return stage

    return register


def before_training(cfg: ExperimentConfig, ws: Any) -> tuple[ExperimentConfig, dict[str, Any]]:
    """The method's stage, if it registered one; else `cfg` as it is and no metrics."""
    stage = STAGES.get(method_name(cfg.method))
    return stage(cfg, ws) if stage is not None else (cfg, {})
