"""Fused trial groups: K configurations trained in one forward/backward over one frozen backbone.

Every row of a fused batch belongs to one member (`Batch.groups`: consecutive row spans). The
members' prompt methods and heads are ordinary modules; `FusedMethod` runs each on its own rows
and pads its slots to the group's longest prompt (the padding slots are dead: hidden from
attention), so members may differ in prompt length, position, layer set, first prompted layer
(rows start at their own block, as the engine's per-row layouts allow), LPT generator and
initialisation. A linear-probe member's prompt has no slots: its rows stay unprompted.

Rows never mix inside a transformer (attention stays within a row, norms are per token), so each
member's loss depends on its own parameters alone: the group's loss is the sum of the members'
means and every member gets the gradients it would get alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from autoprompt_search.backbones import BackboneInfo, KvPrefix, LoraSite, LoraUpdate
from autoprompt_search.config import ExperimentConfig
from autoprompt_search.engine.batch import Batch, spans
from autoprompt_search.engine.model import PromptedModel
from autoprompt_search.methods import METHODS, BatchContext, PromptMethod, SlotLayout, build_method, method_name


class FusedMethod(PromptMethod):
    """The members' prompt methods side by side; each sees only its rows (`ctx.groups`)."""

    name = "fused"
    config_class = type(None)

    def __init__(self, methods: list[PromptMethod], info: BackboneInfo) -> None:
        nn.Module.__init__(self)
        self.info = info
        self.members = nn.ModuleList(methods)
        self._layout_ctx: BatchContext | None = None  # this forward pass's (embed_input reads its rows)

    def member(self, index: int) -> PromptMethod:
        return self.members[index]  # type: ignore[return-value]

    @property
    def length(self) -> int:
        return max((m.length for m in self._methods()), default=0)

    @property
    def start_layer(self) -> int:
        return min((m.start_layer for m in self._methods()), default=self.info.num_layers)

    @property
    def needs_summary(self) -> bool:  # type: ignore[override]
        return any(m.needs_summary for m in self._methods())

    def _methods(self) -> list[PromptMethod]:
        return [self.member(i) for i in range(len(self.members))]

    def _spans(self, ctx: BatchContext) -> list[tuple[PromptMethod, int, int]]:
        assert ctx.groups is not None, "a fused batch names its members' rows (Batch.groups)"
        return [(self.member(m), lo, hi) for m, lo, hi in spans(ctx.groups)]

    def layout(self, ctx: BatchContext) -> SlotLayout:
        self._layout_ctx = ctx
        length = self.length
        parts = []
        for method, lo, hi in self._spans(ctx):
            zero = torch.zeros_like(ctx.input_ids[lo:hi, 0])  # (b,) long
            own = method.layout(ctx.rows(lo, hi))
            pad = length - own.live.shape[1]
            live = nn.functional.pad(own.live, (0, pad))  # (b, L): the member's slots, then dead ones
            after = nn.functional.pad(own.after, (0, pad))
            parts.append(SlotLayout(live, after, own.start, zero if own.offset is None else own.offset))
        offset = torch.cat([p.offset for p in parts])  # type: ignore[misc]
        return SlotLayout(
            torch.cat([p.live for p in parts]),
            torch.cat([p.after for p in parts]),
            torch.cat([p.start for p in parts]),
            offset,
        )

    def inject(self, layer: int, slots: Tensor | None, text: Tensor, ctx: BatchContext) -> Tensor | None:
        length = self.length
        outs, fresh = [], False
        for method, lo, hi in self._spans(ctx):
            own = slots[lo:hi] if slots is not None else None  # (b, L, d)
            mine = None if own is None else own[:, : method.length]
            new = method.inject(layer, mine, text[lo:hi], ctx.rows(lo, hi))
            if new is None:
                outs.append(own if own is not None else text.new_zeros(hi - lo, length, text.shape[-1]))
                continue
            fresh = True
            outs.append(nn.functional.pad(new, (0, 0, 0, length - new.shape[1])))
        return torch.cat(outs) if fresh else None

    def kv_prefix(self, layer: int, ctx: BatchContext) -> KvPrefix | None:
        """The members' prefixes at `layer`, padded to the longest with dead slots (none for the rest)."""
        own = [(m.kv_prefix(layer, ctx.rows(lo, hi)), lo, hi) for m, lo, hi in self._spans(ctx)]
        present = [p for p, _, _ in own if p is not None]
        if not present:
            return None
        _, heads, _, head_dim = present[0].keys.shape
        width = max(p.keys.shape[2] for p in present)
        keys, values, live = [], [], []
        for prefix, lo, hi in own:
            if prefix is None:
                empty = present[0].keys.new_zeros(hi - lo, heads, width, head_dim)
                keys.append(empty)
                values.append(empty)
                live.append(torch.zeros(hi - lo, width, dtype=torch.bool, device=empty.device))
                continue
            pad = width - prefix.keys.shape[2]
            keys.append(nn.functional.pad(prefix.keys, (0, 0, 0, pad)))  # (b, H_kv, P, hd)
            values.append(nn.functional.pad(prefix.values, (0, 0, 0, pad)))
            live.append(nn.functional.pad(prefix.live, (0, pad)))  # padding slots are dead
        return KvPrefix(torch.cat(keys), torch.cat(values), torch.cat(live))

    def lora_updates(self, layer: int, ctx: BatchContext) -> list[LoraUpdate]:
        """One update per projection for the whole batch: each row gets its member's A and B (ranks
        padded with zeros to the group's largest; zeros for members without one there), applied
        with one batched matmul, as multi-adapter serving batches many LoRAs."""
        spans_ = self._spans(ctx)
        widths = ctx.widths or (ctx.input_ids.shape[1],) * len(spans_)
        own = [{u.site: u for u in m.lora_updates(layer, ctx.rows(lo, hi))} for m, lo, hi in spans_]
        sites = sorted({site for updates in own for site in updates}, key=lambda site: site[:2])  # the members' order
        return [
            self._merged(
                site,
                [(u.get(site), lo, hi, w) for u, (_, lo, hi), w in zip(own, spans_, widths, strict=True)],
                ctx.input_ids.shape[1],
            )
            for site in sites
        ]

    @staticmethod
    def _merged(site: LoraSite, parts: list[tuple[LoraUpdate | None, int, int, int]], text: int) -> LoraUpdate:
        """parts: (the member's update or None, first row, end row, its text width); text: the batch's."""
        present = [u for u, _, _, _ in parts if u is not None]
        rank = max(u.down.shape[0] for u in present)
        (_, fan_in), (fan_out, _) = present[0].down.shape, present[0].up.shape
        downs, ups = [], []
        for update, lo, hi, _ in parts:
            if update is None:
                downs.append(present[0].down.new_zeros(hi - lo, rank, fan_in))
                ups.append(present[0].up.new_zeros(hi - lo, fan_out, rank))
                continue
            pad = rank - update.down.shape[0]
            downs.append(nn.functional.pad(update.down, (0, 0, 0, pad)).expand(hi - lo, -1, -1))  # (b, r, in)
            ups.append(nn.functional.pad(update.up, (0, pad)).expand(hi - lo, -1, -1))  # (b, out, r)

        def dropout(x: Tensor) -> Tensor:  # x: (B, S, in), S = the group's slots + its widest text
            # Each member draws its mask on its own rows' text at its own width: the shape it draws
            # alone (its padding slots are dead, the padding past its width is masked), so its noise
            # is the same fused or alone.
            rows = []
            for update, lo, hi, width in parts:
                mine = x[lo:hi]
                if update is not None:
                    slots = x.shape[1] - text  # slot columns before the text
                    mine = torch.cat(
                        [mine[:, :slots], update.dropout(mine[:, slots : slots + width]), mine[:, slots + width :]], 1
                    )
                rows.append(mine)
            return torch.cat(rows)

        return LoraUpdate(site, torch.cat(downs), torch.cat(ups), dropout)

    def embed_input(self, embed: Callable[..., Tensor], after: Tensor) -> Tensor:
        """Each member that mixes arrangements (dynamic prompting) does so on its own rows."""
        h = embed(after)
        assert self._layout_ctx is not None, "layout() runs before embed_input()"
        for method, lo, hi in self._spans(self._layout_ctx):
            if type(method).embed_input is PromptMethod.embed_input:
                continue

            def own(part: Tensor, values: Tensor | None = None, lo: int = lo, hi: int = hi) -> Tensor:
                """The member's rows (b, L+T, d), its slots placed by `part` (b, L_m) [with `values`]."""
                full = after.clone()
                full[lo:hi] = nn.functional.pad(part, (0, after.shape[1] - part.shape[1]))
                every = None
                if values is not None:  # the member's slots, padded to the group's; other rows unused
                    every = values.new_zeros(after.shape[0], after.shape[1], values.shape[-1])
                    every[lo:hi, : values.shape[1]] = values
                return embed(full, every)[lo:hi]

            mixed = method.embed_input(own, after[lo:hi, : method.length])
            h = torch.cat([h[:lo], mixed, h[hi:]])
        return h

    def on_step(self, step: int, steps: int) -> None:
        for m in self._methods():
            m.on_step(step, steps)


class FusedModel(PromptedModel):
    """A `PromptedModel` over the members' methods and heads; forward returns each row's logits."""

    def __init__(self, members: list[PromptedModel]) -> None:
        backbone = members[0].backbone
        method = FusedMethod([m.method for m in members], BackboneInfo.of(backbone))
        super().__init__(backbone, method, nn.ModuleList([m.head for m in members]))
        masks = {m.mask_token_id for m in members}
        assert len(masks) == 1, "members of a fused group share their head kind"
        self._mask_token_id = masks.pop()

    @property
    def mask_token_id(self) -> int | None:
        return self._mask_token_id

    def forward(self, batch: Batch) -> Tensor:
        """Class logits (B, C), each member's rows through its own head."""
        assert batch.groups is not None
        states = self.head_states(batch)  # (B, d)
        heads: Any = self.head
        return torch.cat([heads[m](states[lo:hi]) for m, lo, hi in spans(batch.groups)])


def fusable(cfg: ExperimentConfig) -> bool:
    """Whether `cfg` can train inside a fused group (SPT-DARTS runs its own bi-level loop)."""
    return not METHODS[method_name(cfg.method)].trains_alone(cfg.method)


def fusion_key(cfg: ExperimentConfig) -> tuple[Any, ...]:
    """Configurations with equal keys can share a fused batch (same head, batching and precision)."""
    tc = cfg.train
    return (cfg.head.kind, tuple(cfg.head.label_words), cfg.head.pooler, cfg.head.pooling, tc.batch_size, tc.eval_batch_size,
            tc.device, tc.precision, tc.prefix_cache, tc.prefix_cache_gb)  # fmt: skip


def partition(
    cfgs: list[ExperimentConfig], info: BackboneInfo, size: int, text_tokens: float = 0.0, pad_tolerance: float = 0.25
) -> list[list[int]]:
    """Indices of `cfgs` in fused groups of at most `size`.

    Only configurations with equal `fusion_key`s and the same first prompted layer share a group:
    blocks below a member's first layer then run frozen (eval mode, no dropout, cached) exactly as
    they would alone, and the group shares one frozen-prefix cache. A group pads every prompt to its
    longest, so members are taken in order of prompt length and a group closes before its longest
    row (prompt + `text_tokens`, the mean text length) would exceed its shortest by more than
    `pad_tolerance`. SPT-DARTS searches run alone.
    """

    def shape(i: int) -> tuple[int, int]:
        method = build_method(cfgs[i].method, info)
        return (method.start_layer, method.length)

    groups: list[list[int]] = []
    by_key: dict[tuple[Any, ...], list[int]] = {}
    for i, cfg in enumerate(cfgs):
        if fusable(cfg):
            by_key.setdefault((*fusion_key(cfg), shape(i)[0]), []).append(i)
        else:
            groups.append([i])
    for indices in by_key.values():
        current: list[int] = []
        for i in sorted(indices, key=lambda i: (shape(i)[1], i)):
            shortest = shape(current[0])[1] + text_tokens if current else 0.0
            if current and (len(current) == size or shape(i)[1] + text_tokens > (1 + pad_tolerance) * shortest):
                groups.append(current)
                current = []
            current.append(i)
        groups.append(current)
    return sorted(groups)
