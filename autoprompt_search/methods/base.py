"""The interface every prompt method implements, and the per-row layout it hands the engine.

A batch is laid out physically as `[L prompt slots | T text tokens]` at every layer from the
first prompted one up. Where a slot *logically* sits (before the input, after it, or not at all)
is a per-row fact carried by `SlotLayout`; the engine turns it into position ids and attention
masks. This keeps one tensor shape for every row while allowing:

- a split position (P[j:] + input + P[:j]) as logical positions, not a reordering;
- per-instance positions and lengths (dynamic prompting): `live` and `after` differ per row,
  and dead slots are hidden from attention;
- several configurations in one batch (fused trial groups): rows of different members differ in
  length (`live`), position (`after`) and first prompted layer (`start`).

At each block `i >= start`, the engine calls `inject(i, slots, text, ctx)`: the method may return
new slot states (a fresh deep prompt, a generated LPT prompt, or a gate-weighted mix of the
propagated `slots` and a new prompt, as SPT does) or None to let the propagated ones go on.
It also asks `kv_prefix(i, ctx)` for keys and values the block's attention prepends to the
text's own (P-tuning v2's form: nothing flows on to the next block), and `lora_updates(i, ctx)` for
low-rank updates the block's projections add to their outputs (LoRA's form).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from autoprompt_search.backbones import BackboneInfo, KvPrefix, LoraUpdate
from autoprompt_search.errors import ConfigError


def check_layers(layers: tuple[int, ...], info: BackboneInfo) -> None:
    """Every block index of a method's layer set exists in the model."""
    bad = [i for i in layers if not 0 <= i < info.num_layers]
    if bad:
        raise ConfigError(
            f"method.layers: layer {bad[0]} out of range for a {info.num_layers}-layer model; "
            f"use 0..{info.num_layers - 1}"
        )


@dataclass
class BatchContext:
    """What a method may read about the batch besides hidden states."""

    input_ids: Tensor  # (B, T)
    text_mask: Tensor  # (B, T) bool, True on real tokens
    summary: Tensor | None = None  # (B, d) mean-pooled frozen last layer, for methods that ask
    groups: tuple[tuple[int, int], ...] | None = None  # fused groups: (member, rows) spans, see engine.Batch
    widths: tuple[int, ...] | None = None  # fused groups: each member's own text width, see engine.Batch

    def rows(self, start: int, end: int) -> BatchContext:
        """The context of rows [start, end) (one member of a fused group)."""
        summary = None if self.summary is None else self.summary[start:end]
        return BatchContext(self.input_ids[start:end], self.text_mask[start:end], summary)


@dataclass
class SlotLayout:
    """Per-row placement of the L prompt slots."""

    live: Tensor  # (B, L) bool: slot is a real prompt token for this row
    after: Tensor  # (B, L) bool: slot sits after the input (split / suffix), else before it
    start: Tensor  # (B,) long: first block index (0 = input embeddings) where the slots are live
    # (B,) long: logical positions a key/value prefix takes before everything else from `start` on
    # (P-tuning v2 and a KV cache: the text starts at position P); None = 0
    offset: Tensor | None = None

    @staticmethod
    def uniform(
        batch: int, length: int, start: int, device: torch.device, split_at: int = 0, offset: int = 0
    ) -> SlotLayout:
        """Every row the same: slots [0, split_at) after the input, [split_at, L) before it."""
        live = torch.ones(batch, length, dtype=torch.bool, device=device)
        after = torch.zeros(batch, length, dtype=torch.bool, device=device)
        after[:, :split_at] = True
        full = torch.full((batch,), start, dtype=torch.long, device=device)
        return SlotLayout(live, after, full, torch.full_like(full, offset) if offset else None)


class PromptMethod(nn.Module):
    """Base class of prompt methods. Subclasses set `name` and `config_class`."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    #: Set True to receive `ctx.summary` (a frozen text-only pass, mean-pooled): dynamic prompting.
    needs_summary: ClassVar[bool] = False
    #: "module:function" run before training a configuration of this method (see training/stages.py)
    stage: ClassVar[str] = ""

    def __init__(self, config: Any, info: BackboneInfo) -> None:
        super().__init__()
        config.check(info)
        self.config = config
        self.info = info

    @property
    def length(self) -> int:
        """Number of prompt slots L."""
        raise NotImplementedError

    @property
    def start_layer(self) -> int:
        """Lowest block at which any row's slots can start; blocks below it run frozen."""
        raise NotImplementedError

    def layout(self, ctx: BatchContext) -> SlotLayout:
        raise NotImplementedError

    def inject(self, layer: int, slots: Tensor | None, text: Tensor, ctx: BatchContext) -> Tensor | None:
        """New slot states (B, L, d) entering block `layer`, or None to keep `slots`.

        `slots` is None at the first prompted layer; `text` is (B, T, d), the text's hidden states
        entering block `layer` (at layer 0: word embeddings before positions are added).
        """
        raise NotImplementedError

    def kv_prefix(self, layer: int, ctx: BatchContext) -> KvPrefix | None:
        """Keys and values block `layer`'s attention prepends (P-tuning v2's form), or None."""
        return None

    def lora_updates(self, layer: int, ctx: BatchContext) -> list[LoraUpdate]:
        """Low-rank updates block `layer`'s projections add (LoRA's form), or none."""
        return []

    def embed_input(self, embed: Callable[..., Tensor], after: Tensor) -> Tensor:
        """The input embeddings (B, L+T, d) of `[slots | text]` at block 0.

        `embed(after, values=None)` embeds them with the slots flagged in `after` (B, L) bool
        placed after the input, and the slot vectors `values` (B, L, d) instead of the ones
        `inject(0, ...)` returned; `after` is this method's layout. A method that chooses among
        arrangements per row (dynamic prompting) mixes them here so every option gets a gradient.
        """
        return embed(after)

    # ---- how the method trains (class-level: called before any module is built) -------------
    @classmethod
    def trains_alone(cls, config: Any) -> bool:
        """True when `config` runs its own training stages and cannot join a fused group."""
        return False

    def on_step(self, step: int, steps: int) -> None:
        """Called before every training step (1-based) of `steps`: schedules such as a Gumbel temperature."""

    def init_parameters(self, word_embeddings: nn.Embedding, generator: torch.Generator) -> None:
        """Seeded initialisation; may read the frozen vocabulary (e.g. prompt tuning's vocab init)."""

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
