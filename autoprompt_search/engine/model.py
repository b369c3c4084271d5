"""The prompt engine: a frozen backbone run block by block with prompt slots injected.

Physical layout at and above the first prompted block: `[L prompt slots | T text tokens]`.
Below it the model runs on the text alone, under `torch.no_grad()` and in eval mode (no
dropout), so no gradient and no activation memory is spent there (LPT's whole advantage) and
its output depends on the input alone (what a frozen-prefix cache relies on).

Logical order (prefix, split, per-row lengths) lives in position ids and attention masks built
by `sequence_layout`, so one batch may carry rows laid out differently.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from autoprompt_search.backbones import Backbone
from autoprompt_search.engine.batch import Batch
from autoprompt_search.methods import BatchContext, PromptMethod


class Layout(NamedTuple):
    positions: Tensor  # (B, S) long, logical position of each physical token
    visible: Tensor  # (B, S, S) bool, visible[b, query, key]
    live: Tensor  # (B, S) bool, live slots and real text tokens


def sequence_layout(
    slot_live: Tensor, slot_after: Tensor, text_mask: Tensor, causal: bool, offset: Tensor | None = None
) -> Layout:
    """Logical positions and attention visibility of `[slots | text]`.

    slot_live, slot_after: (B, L) bool; text_mask: (B, T) bool; S = L + T; offset: (B,) long or None.
    Live slots before the input take positions offset.. (the positions below belong to a key/value
    prefix), the text follows, live slots after the input come after the last real token. Dead
    slots and padding are visible to nobody but themselves (a fully masked query row would make
    SDPA return NaN).
    """
    before = slot_live & ~slot_after  # (B, L)
    after = slot_live & slot_after  # (B, L)
    n_before = before.sum(1, keepdim=True)  # (B, 1)
    n_text = text_mask.sum(1, keepdim=True)  # (B, 1)
    t = torch.arange(text_mask.shape[1], device=text_mask.device)[None, :]  # (1, T)
    text_pos = n_before + t  # (B, T)
    slot_pos = torch.where(before, before.cumsum(1) - 1, n_before + n_text + after.cumsum(1) - 1)  # (B, L)
    if offset is not None:
        text_pos, slot_pos = text_pos + offset[:, None], slot_pos + offset[:, None]
    slot_pos = slot_pos.masked_fill(~slot_live, 0)
    positions = torch.cat([slot_pos, text_pos], 1)  # (B, S)
    live = torch.cat([slot_live, text_mask], 1)  # (B, S)
    visible = live[:, None, :].expand(-1, live.shape[1], -1)  # (B, S, S)
    if causal:
        visible = visible & (positions[:, None, :] <= positions[:, :, None])
    eye = torch.eye(live.shape[1], dtype=torch.bool, device=live.device)
    return Layout(positions, visible | eye, live)


@contextmanager
def frozen_eval(module: nn.Module) -> Iterator[None]:
    """Run `module` in eval mode (no dropout) inside the block, then restore every submodule's mode."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


class PromptedModel(nn.Module):
    """Frozen backbone + prompt method (`probe`: none at all) + head."""

    def __init__(self, backbone: Backbone, method: PromptMethod, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.method = method
        self.head = head

    # ---- modes and parameters ----------------------------------------------------------
    @property
    def first_layer(self) -> int:
        """Lowest block the method can prompt (num_layers for a linear probe)."""
        return self.method.start_layer

    def train(self, mode: bool = True) -> PromptedModel:
        super().train(mode)
        # The frozen part below the first prompted block never trains: keep its dropout off.
        first = self.first_layer
        if first > 0:
            for m in self.backbone.lower_modules:
                m.eval()
        for i in range(min(first, self.backbone.num_layers)):
            self.backbone.blocks[i].eval()
        return self

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters().values())

    # ---- forward ----------------------------------------------------------------------
    def forward(self, batch: Batch) -> Tensor:
        """Class logits (B, C)."""
        return self.head(self.head_states(batch))

    def head_states(self, batch: Batch) -> Tensor:
        """Final hidden state of each row's head token (B, d), the mean over its text tokens, or
        the sequence's first position (an input prompt's first slot)."""
        h, final = self.hidden_states(batch)
        length = h.shape[1] - batch.input_ids.shape[1]
        pooling = getattr(self._first_head(), "pooling", "token")
        if pooling == "mean":
            mask = batch.text_mask[:, :, None].to(h.dtype)  # (B, T, 1)
            return (h[:, length:] * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, d)
        if pooling == "first":
            return h[:, 0]  # (B, d): slot 0 when the input is prompted, else the first text token
        rows = torch.arange(h.shape[0], device=h.device)
        return h[rows, self.head_index(batch, final, length)]  # (B, d)

    def hidden_states(self, batch: Batch) -> tuple[Tensor, Layout]:
        """Final hidden states (B, L+T, d) of `[slots | text]` (after the final norm) and their layout."""
        bb, method = self.backbone, self.method
        ids, text_mask = batch.input_ids, batch.text_mask
        n_layers = bb.num_layers
        ctx = BatchContext(ids, text_mask, groups=batch.groups, widths=batch.widths)
        if method.needs_summary:
            ctx.summary = self._summary(batch)

        length = method.length
        empty = text_mask.new_zeros(ids.shape[0], length)  # (B, L) bool
        layout = method.layout(ctx)
        # Two layouts: before a row's prompt starts (slots dead) and after.
        pre = sequence_layout(empty, empty, text_mask, bb.causal)
        post = sequence_layout(layout.live, layout.after, text_mask, bb.causal, layout.offset)
        layouts = _RowLayouts(bb, layout.start, pre, post)
        first = min(layouts.starts)

        types = batch.token_types
        if first == 0:
            with torch.no_grad():
                word = bb.word_embeddings(ids)  # (B, T, d)
            slots = method.inject(0, None, word, ctx)  # (B, L, d)
            slot_types = None if types is None else torch.cat([types.new_zeros(ids.shape[0], length), types], 1)

            def embed(after: Tensor, values: Tensor | None = None) -> Tensor:  # (B, L) bool -> (B, L+T, d)
                placed = sequence_layout(layout.live, after, text_mask, bb.causal, layout.offset)
                positions = _RowLayouts(bb, layout.start, pre, placed).at(0).positions
                return bb.embed(torch.cat([slots if values is None else values, word], 1), positions, slot_types)

            h = method.embed_input(embed, layout.after)  # (B, L+T, d)
        else:
            h = self.text_states(batch, min(first, n_layers))  # (B, T, d)
            if first < n_layers:
                slots = method.inject(first, None, h, ctx)
                h = torch.cat([slots, h], 1)  # (B, L+T, d)

        for i in range(first, n_layers):
            if i > first:
                new = method.inject(i, h[:, :length], h[:, length:], ctx)
                if new is not None:
                    h = torch.cat([new, h[:, length:]], 1)
            prefix, lora = method.kv_prefix(i, ctx), method.lora_updates(i, ctx)
            h = bb.run_block(i, h, layouts.inputs(i, h), prefix, lora)  # (B, L+T, d)
        if first >= n_layers:  # a method that starts after the last block (probe) added no slots
            return bb.final_norm(h), sequence_layout(empty[:, :0], empty[:, :0], text_mask, bb.causal)
        return bb.final_norm(h), layouts.at(n_layers)

    @property
    def mask_token_id(self) -> int | None:
        """The appended mask token a label-word head reads on encoders, else None."""
        return getattr(self.head, "mask_token_id", None)

    def _first_head(self) -> nn.Module:
        """The head (a fused model's members share the head configuration: the first one's)."""
        return self.head[0] if isinstance(self.head, nn.ModuleList) else self.head

    def head_index(self, batch: Batch, final: Layout, length: int) -> Tensor:
        """Physical index (B,) of each row's head token in `[slots | text]`."""
        mask_id = self.mask_token_id
        if mask_id is not None:  # encoder label words: the appended mask token
            return length + (batch.input_ids == mask_id).int().argmax(1)
        if not self.backbone.causal:
            return torch.full_like(batch.input_ids[:, 0], length)  # first text token ([CLS])
        # Decoders read the logically last live token (a suffix prompt slot when there is one).
        return final.positions.masked_fill(~final.live, -1).argmax(1)

    @torch.no_grad()
    def text_states(self, batch: Batch, layer: int) -> Tensor:
        """Hidden states (B, T, d) of the text alone entering block `layer` (num_layers: after the
        last block, before the final norm), starting from `batch.prefix` when it is at or below it.

        Blocks below a method's first prompted layer never see a prompt and run in eval mode, so
        this depends on the input alone: what the frozen-prefix cache stores.
        """
        bb = self.backbone
        empty = batch.text_mask[:, :0]
        text = sequence_layout(empty, empty, batch.text_mask, bb.causal)
        if batch.prefix is not None and batch.prefix_layer <= layer:
            h, begin = batch.prefix, batch.prefix_layer
        else:
            h = bb.embed(bb.word_embeddings(batch.input_ids), text.positions, batch.token_types)
            begin = 0
        if begin < layer:
            inputs = bb.block_inputs(h, text.positions, text.visible)
            for i in range(begin, layer):
                h = bb.run_block(i, h, inputs)
        return h

    def _summary(self, batch: Batch) -> Tensor:
        """Mean-pooled last hidden state of a frozen text-only pass (B, d), without dropout."""
        with frozen_eval(self.backbone):
            h = self.text_states(batch, self.backbone.num_layers)
        w = batch.text_mask[..., None].to(h.dtype)
        return (h * w).sum(1) / w.sum(1)


class _RowLayouts:
    """Per-block positions and block inputs when rows start their prompts at different blocks."""

    def __init__(self, bb: Backbone, start: Tensor, pre: Layout, post: Layout):
        self.bb, self.start, self.pre, self.post = bb, start, pre, post
        self.starts: list[int] = start.tolist()  # the forward pass's one host sync
        self.uniform = len(set(self.starts)) == 1
        self.cache: dict[tuple[bool, ...], dict[str, Any]] = {}

    def started(self, block: int) -> tuple[bool, ...]:
        return (self.starts[0] <= block,) if self.uniform else tuple(s <= block for s in self.starts)

    def at(self, block: int) -> Layout:
        """The layout of every row entering `block` (block = num_layers: after the last one)."""
        if self.uniform:
            return self.post if self.starts[0] <= block else self.pre
        started = self.start <= block  # (B,)
        return Layout(
            torch.where(started[:, None], self.post.positions, self.pre.positions),
            torch.where(started[:, None, None], self.post.visible, self.pre.visible),
            torch.where(started[:, None], self.post.live, self.pre.live),
        )

    def inputs(self, block: int, h: Tensor) -> dict[str, Any]:
        key = self.started(block)
        if key not in self.cache:
            layout = self.at(block)
            self.cache[key] = self.bb.block_inputs(h, layout.positions, layout.visible)
        return self.cache[key]
