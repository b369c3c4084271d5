"""GPT-2: a decoder with absolute positions and a fused QKV projection."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from autoprompt_search.backbones.base import Backbone, LoraSite


class GPT2Backbone(Backbone):
    """GPT-2: learned absolute positions, causal, final LayerNorm."""

    model_types = ("gpt2",)
    causal = True
    lora_targets: ClassVar[
        dict[str, tuple[LoraSite, ...]]
    ] = {  # query, key and value are column blocks of one fused projection
        "query": (LoraSite("attn.c_attn", 0, 3),),
        "key": (LoraSite("attn.c_attn", 1, 3),),
        "value": (LoraSite("attn.c_attn", 2, 3),),
        "output": (LoraSite("attn.c_proj"),),
        "ffn_in": (LoraSite("mlp.c_fc"),),
        "ffn_out": (LoraSite("mlp.c_proj"),),
    }

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.h

    def attention(self, index: int) -> nn.Module:
        return self.blocks[index].attn

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.model.wte

    @property
    def max_positions(self) -> int | None:
        return int(self.config.n_positions)

    @property
    def lower_modules(self) -> list[nn.Module]:
        return [self.model.wte, self.model.wpe, self.model.drop]

    def embed(self, word: Tensor, positions: Tensor, token_types: Tensor | None) -> Tensor:
        return self.model.drop(word + self.model.wpe(positions))

    def final_norm(self, h: Tensor) -> Tensor:
        return self.model.ln_f(h)
