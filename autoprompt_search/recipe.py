"""The training recipe's pieces that the loop (`trainer.py`) and SPT-DARTS' gate search
(`darts.py`) share: seeding, the seeded batch order, AdamW's parameter groups, epochs as steps
and the warmup + linear decay schedule."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from .config import ExperimentConfig


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def train_batches(rows: Tensor, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Endless seeded shuffles of the training row indices `rows` (N,), in batches."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = rows[torch.randperm(len(rows), generator=generator)]
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield order[start : start + batch_size]
        if len(order) < batch_size:
            yield order


def param_groups(named: dict[str, torch.nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases and normalisation weights (1-d tensors), as in
    transformers' Trainer; prompts, prefixes and weight matrices decay."""
    decay = [p for p in named.values() if p.ndim >= 2]
    plain = [p for p in named.values() if p.ndim < 2]
    return [g for g in ({"params": decay}, {"params": plain, "weight_decay": 0.0}) if g["params"]]


def resolve_epochs(cfg: ExperimentConfig, n_train: int) -> None:
    """With `train.epochs`, set `train.steps` to that many passes over `n_train` rows (the saved
    config then says how many steps ran)."""
    tc = cfg.train
    if tc.epochs > 0:
        tc.steps = max(1, math.ceil(tc.epochs * n_train / tc.batch_size))


def lr_lambda(steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = int(steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return factor


def loss_not_finite(value: float, step: int, stage: str = "", fix: str = "lower --lr or check the data") -> str:
    """The one-line error of a run whose loss is NaN or infinite (the training loop, the gate search)."""
    return f"{stage}loss became {value} at step {step}; {fix}"
