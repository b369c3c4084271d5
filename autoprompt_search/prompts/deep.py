"""Deep prompts: free prompt vectors at any layer set S (0 = the input embeddings).

Prompt tuning (Lester et al. 2021, arXiv:2104.08691) is S = {0}; P-tuning v2 style
(Liu et al. 2021, arXiv:2110.07602) is S = every layer. At each layer in S the prompt slots are
*replaced* by that layer's vectors; at layers above the first one that are not in S, the slots
carry on as ordinary tokens (the propagated prompt).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..backbones import BackboneInfo
from ..errors import require
from .base import BatchContext, PromptMethod, SlotLayout, check_layers

POSITIONS = ("prefix", "split")


@dataclass
class DeepConfig:
    """Free prompts of `length` vectors at every block index in `layers`."""

    layers: tuple[int, ...] = (0,)  # block indices; 0 = input embeddings, N-1 = the last block
    length: int = 20  # prompt length L
    position: str = "prefix"  # prefix | split
    split: int = 0  # with position=split: P[split:] + input + P[:split], 1 <= split <= L
    reparam: int = 0  # hidden size of an MLP reparametrisation (P-tuning v2); 0 = off

    def __post_init__(self) -> None:
        self.layers = tuple(sorted(int(i) for i in self.layers))
        require(len(self.layers) > 0, "method.layers: empty layer set; give at least one block index (0 = input)")
        require(len(set(self.layers)) == len(self.layers), f"method.layers: duplicate index in {list(self.layers)}")
        require(isinstance(self.length, int) and self.length > 0, f"method.length: must be > 0, got {self.length}")
        require(self.position in POSITIONS, f"method.position: {self.position!r} unknown; use prefix or split")
        if self.position == "split":
            require(
                1 <= self.split <= self.length,
                f"method.split: {self.split} must be in 1..{self.length} with position=split",
            )
        else:
            require(self.split == 0, "method.split: only used with position=split; set position: split or drop it")
        require(self.reparam >= 0, f"method.reparam: must be >= 0 (0 = off), got {self.reparam}")

    def check(self, info: BackboneInfo) -> None:
        check_layers(self.layers, info)


def prompt_tuning(length: int = 20) -> DeepConfig:
    """Lester et al.: one prompt at the input embeddings."""
    return DeepConfig(layers=(0,), length=length)


def ptuning_v2(num_layers: int, length: int = 20, reparam: int = 0) -> DeepConfig:
    """P-tuning v2 style: a fresh prompt entering every block."""
    return DeepConfig(layers=tuple(range(num_layers)), length=length, reparam=reparam)


class DeepPrompt(PromptMethod):
    name = "deep"
    config_class = DeepConfig

    def __init__(self, config: DeepConfig, info: BackboneInfo) -> None:
        super().__init__(config, info)
        d = info.hidden_size
        self.slot_of = {layer: i for i, layer in enumerate(config.layers)}
        self.prompts = nn.Parameter(torch.zeros(len(config.layers), config.length, d))  # (|S|, L, d)
        self.reparam = (
            nn.Sequential(nn.Linear(d, config.reparam), nn.Tanh(), nn.Linear(config.reparam, d))
            if config.reparam
            else None
        )

    @property
    def length(self) -> int:
        return self.config.length

    @property
    def start_layer(self) -> int:
        return self.config.layers[0]

    def init_parameters(self, word_embeddings: nn.Embedding, generator: torch.Generator) -> None:
        vocab = word_embeddings.weight
        n, length, d = self.prompts.shape
        with torch.no_grad():
            # Lester et al.: sampled vocabulary embeddings train better than random at the input.
            ids = torch.randint(0, vocab.shape[0], (length,), generator=generator)
            self.prompts[0].copy_(vocab[ids].float())
            # Deeper layers see LayerNorm'd / residual states of unit scale.
            self.prompts[1:].copy_(torch.randn(n - 1, length, d, generator=generator))
            if self.config.layers[0] != 0:
                self.prompts[0].copy_(torch.randn(length, d, generator=generator))
            if self.reparam is not None:
                for m in self.reparam:
                    if isinstance(m, nn.Linear):
                        bound = m.in_features**-0.5
                        m.weight.uniform_(-bound, bound, generator=generator)
                        m.bias.zero_()

    def layout(self, ctx: BatchContext) -> SlotLayout:
        b = ctx.input_ids.shape[0]
        return SlotLayout.uniform(b, self.length, self.config.layers[0], ctx.input_ids.device, self.config.split)

    def inject(self, layer: int, slots: Tensor | None, text: Tensor, ctx: BatchContext) -> Tensor | None:
        index = self.slot_of.get(layer)
        if index is None:
            return None
        prompt = self.prompts[index]  # (L, d)
        if self.reparam is not None:
            prompt = prompt + self.reparam(prompt)
        return prompt.to(text.dtype).expand(text.shape[0], -1, -1)  # (B, L, d)
