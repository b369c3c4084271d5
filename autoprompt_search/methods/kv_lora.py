"""Key/value prefixes at one layer set and LoRA at another, in one configuration (as UniPELT,
Mao et al. 2022, arXiv:2110.07577, combines prefix tuning and LoRA; without its gates).

The two parts are the `deep --form kv` and `lora` methods themselves, each over its own layer set:
the prefixes enter the attention of the blocks in `prefix_layers`, the low-rank updates the
projections of the blocks in `layers`. Blocks below the lower of the two sets run frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from autoprompt_search.backbones import BackboneInfo, KvPrefix, LoraUpdate
from autoprompt_search.methods.base import BatchContext, PromptMethod, SlotLayout
from autoprompt_search.methods.deep import DeepConfig, DeepPrompt
from autoprompt_search.methods.lora import LoraConfig, LowRankAdaptation
from autoprompt_search.methods.registry import register_method


@dataclass
class KvLoraConfig:
    """P-tuning v2 prefixes of `length` at `prefix_layers` and rank-`rank` LoRA on `targets` at `layers`."""

    prefix_layers: tuple[int, ...] = ()  # the prefixes' block indices; () = every block
    length: int = 20  # prefix length L
    layers: tuple[int, ...] = ()  # LoRA's block indices; () = every block
    targets: str = "query,value"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.1  # LoRA's, on each updated projection's input

    def __post_init__(self) -> None:
        self.prefix_layers = tuple(sorted(int(i) for i in self.prefix_layers))
        self.lora()  # each part validates its own fields (errors name them as method.<field>)
        self.prefix(max(self.prefix_layers, default=0) + 1)

    def prefix(self, num_layers: int) -> DeepConfig:
        return DeepConfig(layers=self.prefix_layers or tuple(range(num_layers)), length=self.length, form="kv")

    def lora(self) -> LoraConfig:
        return LoraConfig(self.layers, self.targets, self.rank, self.alpha, self.dropout)

    def check(self, info: BackboneInfo) -> None:
        self.prefix(info.num_layers).check(info)
        self.lora().check(info)


@register_method("kv_lora", KvLoraConfig)
class KvPrefixAndLora(PromptMethod):
    def __init__(self, config: KvLoraConfig, info: BackboneInfo) -> None:
        super().__init__(config, info)
        self.prefixes = DeepPrompt(config.prefix(info.num_layers), info)
        self.updates = LowRankAdaptation(config.lora(), info)

    @property
    def length(self) -> int:
        return 0

    @property
    def start_layer(self) -> int:
        return min(self.prefixes.start_layer, self.updates.start_layer)

    def init_parameters(self, word_embeddings: nn.Embedding, generator: torch.Generator) -> None:
        self.prefixes.init_parameters(word_embeddings, generator)
        self.updates.init_parameters(word_embeddings, generator)

    def layout(self, ctx: BatchContext) -> SlotLayout:
        # The prefixes' own positions: the text takes positions from L on where the prefixes start
        # at the first changed block (as `deep --form kv` alone, whose text shifts only when its
        # first prompted block is where its layout starts), else from 0.
        own = self.prefixes.layout(ctx)
        offset = own.offset if self.prefixes.start_layer == self.start_layer else None
        return SlotLayout(own.live, own.after, own.start.clamp(max=self.start_layer), offset)

    def inject(self, layer: int, slots: Tensor | None, text: Tensor, ctx: BatchContext) -> Tensor | None:
        return text.new_zeros(text.shape[0], 0, text.shape[-1]) if slots is None else None

    def kv_prefix(self, layer: int, ctx: BatchContext) -> KvPrefix | None:
        return self.prefixes.kv_prefix(layer, ctx)

    def lora_updates(self, layer: int, ctx: BatchContext) -> list[LoraUpdate]:
        return self.updates.lora_updates(layer, ctx)
