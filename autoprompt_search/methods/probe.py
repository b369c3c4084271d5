"""`probe`: no prompt at all, the frozen model and a trained head (the linear-probe baseline).

A method like the others whose prompt has no slots and starts after the last block, so the
engine runs every block frozen (and a frozen-prefix cache serves all of them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from autoprompt_search.backbones import BackboneInfo
from autoprompt_search.methods.base import BatchContext, PromptMethod, SlotLayout
from autoprompt_search.methods.registry import register_method


@dataclass
class ProbeConfig:
    """No prompt: the frozen model and a trained head (the linear-probe baseline)."""

    def check(self, info: BackboneInfo) -> None:
        return None


@register_method("probe", ProbeConfig)
class LinearProbe(PromptMethod):
    @property
    def length(self) -> int:
        return 0

    @property
    def start_layer(self) -> int:
        return self.info.num_layers

    def layout(self, ctx: BatchContext) -> SlotLayout:
        none = ctx.text_mask.new_zeros(ctx.input_ids.shape[0], 0)  # (B, 0) bool
        return SlotLayout(none, none, torch.full_like(ctx.input_ids[:, 0], self.info.num_layers))

    def inject(self, layer: int, slots: Tensor | None, text: Tensor, ctx: BatchContext) -> Tensor | None:
        return None
