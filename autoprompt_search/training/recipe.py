"""The training recipe's pieces that the loop (`training/loop.py`) and SPT-DARTS' gate search
(`methods/spt_search.py`) share: seeding, the seeded batch order and each rank's share of it, AdamW's
parameter groups, epochs as steps, the warmup + linear decay schedule, and averages over ranks."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from autoprompt_search.config import ExperimentConfig


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


def ranks() -> tuple[int, int]:
    """(this rank, number of ranks) of the data-parallel group; (0, 1) outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_share(rows: Tensor, world: tuple[int, int]) -> Tensor:
    """This rank's rows of a batch (B,) -> (B / ranks,): every rank takes one share of each batch."""
    rank, size = world
    return rows[rank::size] if size > 1 else rows


def mean_across_ranks(values: list[float]) -> list[float]:
    """Losses averaged over the ranks (NaN or inf on one rank stays not finite on every rank)."""
    import torch.distributed as dist

    total = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(total)
    return (total / dist.get_world_size()).tolist()


def average_gradients(grads: tuple[Tensor | None, ...], world: tuple[int, int]) -> tuple[Tensor | None, ...]:
    """Gradients from `torch.autograd.grad` averaged over the ranks, in place: the gradient of the
    whole batch's mean loss when every rank holds an equal share (DDP does this for `.backward`)."""
    if world[1] == 1:
        return grads
    import torch.distributed as dist

    for g in grads:
        if g is not None:
            dist.all_reduce(g)
            g.div_(world[1])
    return grads
