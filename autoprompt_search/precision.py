"""Which precision a run computes in: the one rule the trainer's autocast and the prefix cache share."""

from __future__ import annotations

import torch


def uses_bf16(device: torch.device, precision: str) -> bool:
    """`precision` bf16, or auto on a CUDA device (bf16 autocast); fp32 otherwise."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")
