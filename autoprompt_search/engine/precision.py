"""Which precision a run computes in: one rule for the training autocast, evaluation and the prefix cache."""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def uses_bf16(device: torch.device, precision: str) -> bool:
    """`precision` bf16, or auto on a CUDA device (bf16 autocast); fp32 otherwise."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast where `uses_bf16`, else nothing."""
    if uses_bf16(device, precision):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
