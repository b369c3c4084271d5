"""The adapter interface every backbone family implements, the key/value prefix attention the
sdpa families run under, and the low-rank (LoRA) updates a block's projections add."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn


class KvPrefix(NamedTuple):
    """Learned keys and values one block's self-attention prepends to the text's (P-tuning v2).

    The keys live where a KV cache's do: after the family's position encoding (rotary), so every
    query sees them unrotated; they carry no relative bias (MPNet). `live` hides the padding a fused
    group adds to its shorter prefixes.
    """

    keys: Tensor  # (B, H_kv, P, head_dim)
    values: Tensor  # (B, H_kv, P, head_dim)
    live: Tensor  # (B, P) bool


def prepend_prefix(
    key: Tensor, value: Tensor, mask: Tensor | None, prefix: KvPrefix
) -> tuple[Tensor, Tensor, Tensor | None]:
    """key/value (B, H_kv, S, hd) and a mask (B, 1|H, S, S), boolean or additive, with the prefix in front."""
    keys = torch.cat([prefix.keys.to(key.dtype), key], 2)  # (B, H_kv, P+S, hd)
    values = torch.cat([prefix.values.to(value.dtype), value], 2)  # (B, H_kv, P+S, hd)
    if mask is None:
        return keys, values, None
    b, heads, queries, _ = mask.shape
    live = prefix.live[:, None, None, :].expand(b, heads, queries, -1)  # (B, 1|H, S, P)
    if mask.dtype != torch.bool:
        live = torch.where(live, 0.0, torch.finfo(mask.dtype).min).to(mask.dtype)
    return keys, values, torch.cat([live, mask], -1)  # (B, 1|H, S, P+S)


class LoraSite(NamedTuple):
    """One projection inside a block that a LoRA target updates: its module path, and for a fused
    projection (GPT-2's QKV `c_attn`) which of its `parts` equal column blocks."""

    path: str
    part: int = 0
    parts: int = 1


class LoraUpdate(NamedTuple):
    """What one projection of one block adds to its output: up(down(dropout(x))), as peft's LoRA
    `lora_B(lora_A(dropout(x))) * alpha / r` with the scale folded into `up`."""

    site: LoraSite
    down: Tensor  # A: (r, in) for every row, or (B, r, in) one per row (a fused group)
    up: Tensor  # (alpha / r) B: (out, r), or (B, out, r)
    dropout: Callable[[Tensor], Tensor]  # on the projection's input (B, S, in)


def lora_delta(x: Tensor, update: LoraUpdate) -> Tensor:
    """The update (B, S, out) of a projection whose input is x (B, S, in)."""
    x = update.dropout(x)
    if update.down.dim() == 2:
        return (x @ update.down.mT) @ update.up.mT
    return torch.bmm(torch.bmm(x, update.down.mT), update.up.mT)  # per-row A and B: one batched matmul each


def _lora_hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor | None:
    updates: list[LoraUpdate] = module.lora_updates
    if not updates:
        return None
    for update in updates:
        delta = lora_delta(args[0], update).to(output.dtype)  # (B, S, out / parts)
        if update.site.parts > 1:  # one column block of a fused projection
            width = output.shape[-1] // update.site.parts
            before = update.site.part * width
            delta = nn.functional.pad(delta, (before, output.shape[-1] - before - width))
        output = output + delta
    return output


#: The attention implementation our sdpa families run under: SDPA, plus a block's `kv_prefix`.
PREFIX_ATTENTION = "autoprompt_prefix_sdpa"


def _prefix_sdpa(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Any, **kwargs: Any):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    prefix: KvPrefix | None = getattr(module, "kv_prefix", None)
    if prefix is not None:
        key, value, attention_mask = prepend_prefix(key, value, attention_mask, prefix)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _register_prefix_attention() -> None:
    # Transformers' documented extension point for attention functions: every model that dispatches
    # through `ALL_ATTENTION_FUNCTIONS` (BERT, RoBERTa, GPT-2, Llama, Qwen2, ...) then reaches it,
    # after its own projections and rotary embedding, with no dependence on its KV-cache API.
    # Its masks are SDPA's: without this, transformers builds no mask at all for an unknown name,
    # so the model's own forward (not our engine's) would attend to padding.
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PREFIX_ATTENTION, _prefix_sdpa)
    AttentionMaskInterface.register(PREFIX_ATTENTION, sdpa_mask)


class Backbone(nn.Module):
    """A frozen transformer split into embedding stage, blocks, final norm and heads."""

    model_types: ClassVar[tuple[str, ...]] = ()
    positions_in_embeddings: ClassVar[bool] = True  # absolute position embeddings added in `embed`
    causal: ClassVar[bool] = False
    position_offset: ClassVar[int] = 0  # added to logical positions (RoBERTa/MPNet pad offset)
    attn_implementation: ClassVar[str] = "sdpa"
    #: LoRA targets -> the projections inside a block each one updates
    lora_targets: ClassVar[dict[str, tuple[LoraSite, ...]]] = {}

    def __init__(self, model: nn.Module, lm_head: nn.Module | None) -> None:
        super().__init__()
        self.model = model  # the base transformer (e.g. BertModel), frozen
        self.lm_head = lm_head  # frozen LM head or None
        self.config = model.config
        for p in self.parameters():
            p.requires_grad_(False)
        self._enable_prefixes()
        self._enable_lora()

    def _enable_prefixes(self) -> None:
        """Let `run_block` hand each block's attention a `KvPrefix` (none by default)."""
        _register_prefix_attention()
        self.config._attn_implementation = PREFIX_ATTENTION
        for i in range(self.num_layers):
            self.attention(i).kv_prefix = None

    def _enable_lora(self) -> None:
        """Let `run_block` hand a block's projections low-rank updates (none by default)."""
        for block in self.blocks:
            for sites in self.lora_targets.values():
                for site in sites:
                    module = block.get_submodule(site.path)
                    if not hasattr(module, "lora_updates"):
                        module.lora_updates = []
                        module.register_forward_hook(_lora_hook)

    def lora_shapes(self) -> dict[str, tuple[tuple[LoraSite, int, int], ...]]:
        """Every LoRA target's projections with their (in, out) widths (out: the site's column block)."""
        shapes = {}
        for target, sites in self.lora_targets.items():
            found = []
            for site in sites:
                module = self.blocks[0].get_submodule(site.path)
                out, fan_in = module.weight.shape  # nn.Linear: (out, in)
                if not isinstance(module, nn.Linear):  # transformers' Conv1D (GPT-2): (in, out)
                    fan_in, out = out, fan_in
                found.append((site, int(fan_in), int(out) // site.parts))
            shapes[target] = tuple(found)
        return shapes

    def attention(self, index: int) -> nn.Module:
        """Block `index`'s self-attention module (the one that receives a key/value prefix)."""
        raise NotImplementedError

    # ---- facts -----------------------------------------------------------------------------
    @property
    def blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def head_dim(self) -> int:
        heads = int(self.config.num_attention_heads)
        return int(getattr(self.config, "head_dim", None) or self.hidden_size // heads)

    @property
    def kv_heads(self) -> int:
        """Key/value heads (fewer than query heads under grouped-query attention)."""
        return int(getattr(self.config, "num_key_value_heads", None) or self.config.num_attention_heads)

    @property
    def max_positions(self) -> int | None:
        """Largest logical position + 1 the embeddings accept (None: rotary, unbounded)."""
        n = getattr(self.config, "max_position_embeddings", None)
        return None if n is None else int(n) - self.position_offset

    @property
    def word_embeddings(self) -> nn.Embedding:
        raise NotImplementedError

    @property
    def lower_modules(self) -> list[nn.Module]:
        """Modules that run before block 0 (the embedding stage)."""
        raise NotImplementedError

    # ---- computation -----------------------------------------------------------------------
    def embed(self, word: Tensor, positions: Tensor, token_types: Tensor | None) -> Tensor:
        """Finish the embedding stage: word (B, S, d) + positions (B, S) -> (B, S, d)."""
        raise NotImplementedError

    def block_inputs(self, h: Tensor, positions: Tensor, visible: Tensor) -> dict[str, Any]:
        """Keyword arguments every block gets for this (positions, mask) layout.

        h: (B, S, d) a hidden state of the layout (for dtype/device); positions: (B, S);
        visible: (B, S, S) bool. Computed once per layout and reused by all blocks.
        """
        return {"attention_mask": visible[:, None, :, :]}  # (B, 1, S, S) bool, for SDPA

    def run_block(
        self,
        index: int,
        h: Tensor,
        inputs: dict[str, Any],
        prefix: KvPrefix | None = None,
        lora: Sequence[LoraUpdate] = (),
    ) -> Tensor:
        """Block `index` on h (B, S, d); with `prefix`, its attention also attends the prefix's keys;
        each of `lora` adds its low-rank update to its projection's output."""
        attention = self.attention(index)
        attention.kv_prefix = prefix
        block = self.blocks[index]
        sites = [block.get_submodule(update.site.path) for update in lora]
        for module, update in zip(sites, lora, strict=True):
            module.lora_updates.append(update)
        try:
            out = block(h, **inputs)
        finally:
            attention.kv_prefix = None
            for module in sites:
                module.lora_updates.clear()
        return out[0] if isinstance(out, tuple) else out

    def final_norm(self, h: Tensor) -> Tensor:
        return h

    def pool(self, h: Tensor) -> Tensor:
        """Pretrained pooling of the head token (B, d) -> (B, d); identity where none."""
        return h


def additive_mask(visible: Tensor, dtype: torch.dtype) -> Tensor:
    """Bool mask (B, S, S) -> additive float mask (B, 1, S, S) for eager attention code."""
    zeros = torch.zeros((), dtype=dtype, device=visible.device)
    neg = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=visible.device)
    return torch.where(visible, zeros, neg)[:, None, :, :]
