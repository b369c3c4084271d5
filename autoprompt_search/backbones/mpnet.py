"""MPNet: BERT's layout with a relative position bias in attention."""

from __future__ import annotations

import types
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from autoprompt_search.backbones.base import LoraSite, additive_mask
from autoprompt_search.backbones.bert import BertBackbone


class MPNetBackbone(BertBackbone):
    """MPNet: BERT's layout, positions offset like RoBERTa, a relative attention bias, eager attention."""

    model_types = ("mpnet",)
    attn_implementation = "eager"
    lora_targets: ClassVar[dict[str, tuple[LoraSite, ...]]] = {
        "query": (LoraSite("attention.attn.q"),),
        "key": (LoraSite("attention.attn.k"),),
        "value": (LoraSite("attention.attn.v"),),
        "output": (LoraSite("attention.attn.o"),),
        "ffn_in": (LoraSite("intermediate.dense"),),
        "ffn_out": (LoraSite("output.dense"),),
    }

    def _enable_prefixes(self) -> None:
        # MPNet's attention is hand-written (no attention interface): its modules get ours instead.
        for i in range(self.num_layers):
            module = self.attention(i)
            module.kv_prefix = None
            module.forward = types.MethodType(_mpnet_self_attention, module)

    def attention(self, index: int) -> nn.Module:
        return self.blocks[index].attention.attn

    @property
    def position_offset(self) -> int:  # type: ignore[override]
        return int(self.config.pad_token_id) + 1

    def embed(self, word: Tensor, positions: Tensor, token_types: Tensor | None) -> Tensor:
        return self.model.embeddings(inputs_embeds=word, position_ids=positions + self.position_offset)

    def block_inputs(self, h: Tensor, positions: Tensor, visible: Tensor) -> dict[str, Any]:
        encoder = self.model.encoder
        relative = positions[:, None, :] - positions[:, :, None]  # (B, S, S) key - query
        buckets = encoder.relative_position_bucket(relative, num_buckets=self.config.relative_attention_num_buckets)
        bias = encoder.relative_attention_bias(buckets).permute(0, 3, 1, 2)  # (B, H, S, S)
        return {"attention_mask": additive_mask(visible, h.dtype), "position_bias": bias.to(h.dtype)}

    def pool(self, h: Tensor) -> Tensor:
        return h


def _mpnet_self_attention(
    self: nn.Module,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    position_bias: Tensor | None = None,
    output_attentions: bool = False,
    **kwargs: Any,
) -> tuple[Tensor, ...]:
    """MPNetSelfAttention's computation with the module's `kv_prefix` prepended (no bias on it)."""
    b, s, _ = hidden_states.shape
    hd = self.attention_head_size

    def heads(x: Tensor) -> Tensor:
        return x.view(b, s, -1, hd).transpose(1, 2)  # (B, H, S, hd)

    q, k, v = heads(self.q(hidden_states)), heads(self.k(hidden_states)), heads(self.v(hidden_states))
    scores = q @ k.transpose(-1, -2) / hd**0.5  # (B, H, S, S)
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        scores = scores + attention_mask
    if self.kv_prefix is not None:
        prefix = self.kv_prefix
        prefix_scores = q @ prefix.keys.to(q.dtype).transpose(-1, -2) / hd**0.5  # (B, H, S, P)
        prefix_scores = prefix_scores.masked_fill(~prefix.live[:, None, None, :], torch.finfo(scores.dtype).min)
        scores = torch.cat([prefix_scores, scores], -1)  # (B, H, S, P+S)
        v = torch.cat([prefix.values.to(v.dtype), v], 2)  # (B, H, P+S, hd)
    probs = self.dropout(nn.functional.softmax(scores, dim=-1))
    context = (probs @ v).transpose(1, 2).reshape(b, s, -1)  # (B, S, d)
    out = self.o(context)
    return (out, probs) if output_attentions else (out,)
