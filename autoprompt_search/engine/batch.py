"""A batch of tokenised rows, as the engine reads it, and fused groups' concatenation of them.

Separate from the engine so that data loading (`data/tokens.py`) builds batches without
depending on the model code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Batch:
    input_ids: Tensor  # (B, T) long
    text_mask: Tensor  # (B, T) bool
    token_types: Tensor | None = None  # (B, T) long, encoders with segment embeddings
    labels: Tensor | None = None  # (B,) long
    # Hidden states (B, T, d) of the text alone entering block `prefix_layer`, from a frozen-prefix
    # cache (`engine/prefix_cache.py`); the engine then skips the blocks below that layer.
    prefix: Tensor | None = None
    prefix_layer: int = 0
    # Fused trial groups: consecutive row spans, one per member, as (member index, rows).
    groups: tuple[tuple[int, int], ...] | None = None
    # Fused trial groups: each member's own text width T before padding to the widest (what its
    # batch alone would be: noise drawn over the text, e.g. LoRA dropout, keeps alone's shape).
    widths: tuple[int, ...] | None = None

    def to(self, device: torch.device | str) -> Batch:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(
            move(self.input_ids),  # type: ignore[arg-type]
            move(self.text_mask),  # type: ignore[arg-type]
            move(self.token_types),
            move(self.labels),
            move(self.prefix),
            self.prefix_layer,
            self.groups,
            self.widths,
        )


def spans(groups: tuple[tuple[int, int], ...]) -> list[tuple[int, int, int]]:
    """(member, first row, end row) of each member's consecutive rows."""
    out, start = [], 0
    for member, rows in groups:
        out.append((member, start, start + rows))
        start += rows
    return out


def concat_batches(parts: list[tuple[int, Batch]]) -> Batch:
    """One batch of every member's rows, in order, padded to the widest: `groups` says whose rows."""

    def pad(t: Tensor, width: int) -> Tensor:
        return torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, width - t.shape[1]))

    batches = [b for _, b in parts]
    width = max(b.input_ids.shape[1] for b in batches)
    types = None
    if any(b.token_types is not None for b in batches):
        types = torch.cat(
            [pad(b.token_types if b.token_types is not None else torch.zeros_like(b.input_ids), width) for b in batches]
        )
    layers = {b.prefix_layer if b.prefix is not None else -1 for b in batches}
    prefix, prefix_layer = None, 0
    if len(layers) == 1 and -1 not in layers:  # every member brought cached states of the same layer
        prefix, prefix_layer = torch.cat([pad(b.prefix, width) for b in batches]), batches[0].prefix_layer  # type: ignore[arg-type]
    labels = None if any(b.labels is None for b in batches) else torch.cat([b.labels for b in batches])  # type: ignore[misc]
    return Batch(
        torch.cat([pad(b.input_ids, width) for b in batches]),
        torch.cat([pad(b.text_mask, width) for b in batches]),
        types,
        labels,
        prefix,
        prefix_layer,
        tuple((member, b.input_ids.shape[0]) for member, b in parts),
        tuple(b.input_ids.shape[1] for b in batches),
    )
