"""Evaluation: a model's predictions and metrics on a split, alone or for every member of a fused group."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch import Tensor

from autoprompt_search.config import ExperimentConfig
from autoprompt_search.data import TokenizedSplit
from autoprompt_search.engine.batch import Batch, concat_batches
from autoprompt_search.engine.model import PromptedModel
from autoprompt_search.engine.precision import autocast
from autoprompt_search.training.metrics import classification_metrics


class EvaluatedMember(Protocol):
    """What evaluation reads of a fused group's member (the loop's per-member state)."""

    index: int  # its place in the fused model
    model: PromptedModel
    cfg: ExperimentConfig


def eval_batches(split: TokenizedSplit, batch_size: int) -> Iterator[Tensor]:
    """Fixed, length-sorted row batches: cheap padding and the same batches every time."""
    order = torch.argsort(split.lengths, stable=True)
    yield from order.split(batch_size)


@torch.no_grad()
def predict_split(
    model: PromptedModel,
    split: TokenizedSplit,
    batch_size: int,
    device: torch.device,
    precision: str,
    fetch: Callable[[Tensor], Batch] | None = None,
) -> Tensor:
    """Predicted class ids (N,) in the split's original order; `fetch(rows)` builds device batches
    (a frozen-prefix cache), else the split's own."""
    return split_logits(model, split, batch_size, device, precision, fetch).argmax(-1)


def split_logits(
    model: PromptedModel,
    split: TokenizedSplit,
    batch_size: int,
    device: torch.device,
    precision: str,
    fetch: Callable[[Tensor], Batch] | None = None,
) -> Tensor:
    """Class logits (N, C) in fp32, in the split's original order (see `predict_split`)."""
    was_training = model.training
    model.eval()
    out: Tensor | None = None
    for rows in eval_batches(split, batch_size):
        batch = fetch(rows) if fetch is not None else split.batch(rows).to(device)
        with autocast(device, precision):
            logits = model(batch)
        if out is None:
            out = torch.empty(len(split), logits.shape[-1])
        out[rows] = logits.float().cpu()
    model.train(was_training)
    return out if out is not None else torch.empty(0, 0)


def evaluate(
    model: PromptedModel,
    split: TokenizedSplit,
    task_metric: str,
    num_classes: int,
    batch_size: int,
    device: torch.device,
    precision: str,
    fetch: Callable[[Tensor], Batch] | None = None,
) -> dict[str, Any]:
    preds = predict_split(model, split, batch_size, device, precision, fetch)
    return classification_metrics(preds, split.labels, num_classes, task_metric)


def evaluate_members(
    model: PromptedModel,
    members: list[EvaluatedMember],
    split: TokenizedSplit,
    fetch: Callable[[Tensor], Batch],
    task_metric: str,
    num_classes: int,
    device: torch.device,
) -> list[dict[str, Any]]:
    """Metrics of each member on `split`, all members in one pass (each batch repeated per member)."""
    if not members:
        return []
    if len(members) == 1 and model is members[0].model:
        tc = members[0].cfg.train
        return [evaluate(model, split, task_metric, num_classes, tc.eval_batch_size, device, tc.precision, fetch)]
    tc = members[0].cfg.train
    was_training = model.training
    model.eval()
    preds = torch.empty(len(members), len(split), dtype=torch.long)
    with torch.no_grad():
        for rows in eval_batches(split, tc.eval_batch_size):
            part = fetch(rows)
            batch = concat_batches([(m.index, part) for m in members])
            with autocast(device, tc.precision):
                logits = model(batch)
            preds[:, rows] = logits.argmax(-1).view(len(members), -1).cpu()
    model.train(was_training)
    return [classification_metrics(p, split.labels, num_classes, task_metric) for p in preds]
