"""BERT, MiniLM and other BertModel checkpoints."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from autoprompt_search.backbones.base import Backbone, LoraSite


class BertBackbone(Backbone):
    """BERT, MiniLM and other BertModel checkpoints (absolute positions, token types, pooler)."""

    model_types = ("bert",)
    lora_targets: ClassVar[dict[str, tuple[LoraSite, ...]]] = {
        "query": (LoraSite("attention.self.query"),),
        "key": (LoraSite("attention.self.key"),),
        "value": (LoraSite("attention.self.value"),),
        "output": (LoraSite("attention.output.dense"),),
        "ffn_in": (LoraSite("intermediate.dense"),),
        "ffn_out": (LoraSite("output.dense"),),
    }

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.encoder.layer

    def attention(self, index: int) -> nn.Module:
        return self.blocks[index].attention.self

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.model.embeddings.word_embeddings

    @property
    def lower_modules(self) -> list[nn.Module]:
        return [self.model.embeddings]

    def embed(self, word: Tensor, positions: Tensor, token_types: Tensor | None) -> Tensor:
        if token_types is None:
            token_types = torch.zeros_like(positions)
        return self.model.embeddings(
            inputs_embeds=word, position_ids=positions + self.position_offset, token_type_ids=token_types
        )

    def pool(self, h: Tensor) -> Tensor:
        pooler = getattr(self.model, "pooler", None)
        return h if pooler is None else torch.tanh(pooler.dense(h))
