"""Stages a method runs before the training loop trains it: a method class names its stage
(`PromptMethod.stage`, "module:function"; SPT names its gate search in `methods/spt_search.py`),
imported here only when a configuration of that method trains.

The loop calls `before_training(cfg, ws)`: it returns the configuration to train (SPT: the
derived layer set) and metrics to add to the result. Methods stay free of training code and
the loop free of method names.
"""

from __future__ import annotations

import importlib
from typing import Any

from autoprompt_search.config import ExperimentConfig
from autoprompt_search.methods import METHODS, method_name


def before_training(cfg: ExperimentConfig, ws: Any) -> tuple[ExperimentConfig, dict[str, Any]]:
    """The method's stage, if it names one; else `cfg` as it is and no metrics."""
    stage = METHODS[method_name(cfg.method)].stage
    if not stage:
        return cfg, {}
    module, _, function = stage.partition(":")
    return getattr(importlib.import_module(module), function)(cfg, ws)
