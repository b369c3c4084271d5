"""Classification metrics: accuracy, binary F1 (positive class 1), Matthews correlation."""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Why a run (or trial) that only ever predicted one class has no result worth selecting.
COLLAPSED = (
    "collapsed: every evaluation predicted a single class, so no checkpoint is worth selecting; "
    "try another --lr (often lower) or more steps"
)


def accuracy(pred: Tensor, gold: Tensor) -> float:
    return float((pred == gold).float().mean())


def f1_binary(pred: Tensor, gold: Tensor) -> float:
    tp = int(((pred == 1) & (gold == 1)).sum())
    fp = int(((pred == 1) & (gold != 1)).sum())
    fn = int(((pred != 1) & (gold == 1)).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews(pred: Tensor, gold: Tensor, num_classes: int) -> float:
    """Multiclass Matthews correlation (Gorodkin's R_K); 0 when undefined."""
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    confusion.index_put_((gold, pred), torch.ones_like(gold, dtype=torch.float64), accumulate=True)
    t, p = confusion.sum(1), confusion.sum(0)  # true / predicted counts per class
    c, s = confusion.trace(), confusion.sum()
    denom = math.sqrt(float((s * s - (p * p).sum()) * (s * s - (t * t).sum())))
    return 0.0 if denom == 0 else float((c * s - (t * p).sum()) / denom)


def classification_metrics(pred: Tensor, gold: Tensor, num_classes: int, metric: str) -> dict[str, float | bool | int]:
    """All metrics plus `score` (the task's metric) and `collapsed` (every prediction one class)."""
    out: dict[str, float | bool | int] = {"accuracy": accuracy(pred, gold)}
    if num_classes == 2:
        out["f1"] = f1_binary(pred, gold)
        # GLUE scores MRPC and QQP by the mean of F1 and accuracy: a constant "positive" predictor
        # gets F1 0.81 where 68% of labels are positive, but its mean with accuracy is lower.
        out["f1_acc"] = (out["f1"] + out["accuracy"]) / 2
    out["mcc"] = matthews(pred, gold, num_classes)
    out["score"] = out[metric]
    counts = torch.bincount(pred, minlength=num_classes)
    out["collapsed"] = bool(int((counts > 0).sum()) <= 1 and num_classes > 1)
    out["n"] = int(gold.shape[0])
    return out
