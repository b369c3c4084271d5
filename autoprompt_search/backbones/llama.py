"""Llama-family decoders (Llama, SmolLM2, Qwen2/3, Mistral): rotary positions, grouped KV heads."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from autoprompt_search.backbones.base import Backbone, LoraSite


class LlamaBackbone(Backbone):
    """Llama-family decoders (Llama, SmolLM2, Qwen2/3, Mistral): rotary positions, RMSNorm."""

    model_types = ("llama", "qwen2", "qwen3", "mistral")
    causal = True
    positions_in_embeddings = False  # rotary: positions act inside attention only
    lora_targets: ClassVar[dict[str, tuple[LoraSite, ...]]] = {
        "query": (LoraSite("self_attn.q_proj"),),
        "key": (LoraSite("self_attn.k_proj"),),
        "value": (LoraSite("self_attn.v_proj"),),
        "output": (LoraSite("self_attn.o_proj"),),
        "ffn_in": (LoraSite("mlp.gate_proj"), LoraSite("mlp.up_proj")),  # the gated FFN's two inputs
        "ffn_out": (LoraSite("mlp.down_proj"),),
    }

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    def attention(self, index: int) -> nn.Module:
        return self.blocks[index].self_attn

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    @property
    def max_positions(self) -> int | None:
        return None

    @property
    def lower_modules(self) -> list[nn.Module]:
        return [self.model.embed_tokens]

    def embed(self, word: Tensor, positions: Tensor, token_types: Tensor | None) -> Tensor:
        return word

    def block_inputs(self, h: Tensor, positions: Tensor, visible: Tensor) -> dict[str, Any]:
        cos_sin = self.model.rotary_emb(h, position_ids=positions)  # 2 x (B, S, head_dim)
        return {"attention_mask": visible[:, None, :, :], "position_ids": positions, "position_embeddings": cos_sin}

    def final_norm(self, h: Tensor) -> Tensor:
        return self.model.norm(h)
