"""Late Prompt Tuning (Liu, Sun, Huang, Qiu 2022, arXiv:2210.11292).

One prompt per instance, generated at insertion layer k >= 1 from the hidden states leaving block
k-1, and concatenated in front of them. k = 0 is refused, as in LPT's public code: a generator
there reads word embeddings (NPG: the first token's, the same for every instance), an input
prompt in disguise; `deep --layers 0` is the input prompt. Blocks below k never see
the prompt, so they run under no_grad. Generators:

- NPG: the first-token state (last real token for decoders) -> Linear(d, r) -> ReLU ->
  Linear(r, L*d) -> (B, L, d) -> dropout.
- APPG / MPPG: Linear(d, r) on every token, adaptive average / max pooling over the real
  (unpadded) tokens down to L positions, ReLU, Linear(r, d), dropout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from autoprompt_search.backbones import BackboneInfo
from autoprompt_search.errors import ConfigError, require
from autoprompt_search.methods.base import BatchContext, PromptMethod, SlotLayout
from autoprompt_search.methods.noise import SeededDropout
from autoprompt_search.methods.registry import register_method

GENERATORS = ("npg", "appg", "mppg")
GENERATOR_AT_0 = (
    "{field}: a prompt generator at layer 0 reads word embeddings (the same prompt for every instance); "
    "use layers >= 1, or `deep --layers 0` for an input prompt"
)


def check_generator_options(cfg: Any) -> None:
    """The options LPT and SPT share: a generated prompt's length, generator kind, bottleneck, dropout."""
    require(isinstance(cfg.length, int) and cfg.length > 0, f"method.length: must be > 0, got {cfg.length}")
    require(
        cfg.generator in GENERATORS, f"method.generator: {cfg.generator!r} unknown; use one of {', '.join(GENERATORS)}"
    )
    require(cfg.bottleneck > 0, f"method.bottleneck: must be > 0, got {cfg.bottleneck}")
    require(0.0 <= cfg.dropout < 1.0, f"method.dropout: must be in [0, 1), got {cfg.dropout}")


@dataclass
class LateConfig:
    """One instance-generated prompt of `length` vectors entering block `layer`."""

    first_layer: ClassVar[int] = 1  # generators read a block's output; search spaces sample from here

    layer: int = 1  # insertion layer k >= 1: the prompt enters block k
    length: int = 5  # prompt length L
    generator: str = "npg"  # npg | appg | mppg
    bottleneck: int = 128  # generator bottleneck r
    dropout: float = 0.1

    def __post_init__(self) -> None:
        check_generator_options(self)
        require(self.layer != 0, GENERATOR_AT_0.format(field="method.layer"))

    def check(self, info: BackboneInfo) -> None:
        if not 1 <= self.layer < info.num_layers:
            raise ConfigError(
                f"method.layer: insertion layer {self.layer} out of range for a {info.num_layers}-layer model; "
                f"use 1..{info.num_layers - 1}"
            )


def adaptive_pool_weights(text_mask: Tensor, length: int) -> Tensor:
    """(B, T) bool -> (B, L, T) bool: bin l of row b covers real tokens [l*n/L, (l+1)*n/L).

    Like `adaptive_avg_pool1d` applied to each row's n real tokens; bins are never empty.
    """
    n = text_mask.sum(1, keepdim=True)  # (B, 1)
    bins = torch.arange(length, device=text_mask.device)[None, :]  # (1, L)
    lo = torch.div(bins * n, length, rounding_mode="floor")  # (B, L)
    hi = torch.div((bins + 1) * n + length - 1, length, rounding_mode="floor")  # ceil
    t = torch.arange(text_mask.shape[1], device=text_mask.device)[None, None, :]  # (1, 1, T)
    return (t >= lo[..., None]) & (t < hi[..., None])  # (B, L, T)


class PromptGenerator(nn.Module):
    """LPT's neural prompt generator: hidden states (B, T, d) -> an instance prompt (B, L, d)."""

    def __init__(self, kind: str, hidden: int, bottleneck: int, length: int, dropout: float, read_last: bool) -> None:
        super().__init__()
        self.kind, self.length, self.read_last = kind, length, read_last  # decoders read the last real token
        self.down = nn.Linear(hidden, bottleneck)
        self.up = nn.Linear(bottleneck, length * hidden) if kind == "npg" else nn.Linear(bottleneck, hidden)
        self.dropout = SeededDropout(dropout)

    def init_parameters(self, generator: torch.Generator) -> None:
        with torch.no_grad():
            for m in (self.down, self.up):
                bound = m.in_features**-0.5
                m.weight.uniform_(-bound, bound, generator=generator)
                m.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, text: Tensor, text_mask: Tensor) -> Tensor:
        """text (B, T, d), text_mask (B, T) -> prompt (B, L, d)."""
        b, _, d = text.shape
        if self.kind == "npg":
            if self.read_last:
                last = text_mask.sum(1) - 1  # (B,)
                summary = text[torch.arange(b, device=text.device), last]  # (B, d)
            else:
                summary = text[:, 0]  # (B, d)
            prompt = self.up(torch.relu(self.down(summary))).view(b, self.length, d)  # (B, L, d)
            return self.dropout(prompt)
        z = self.down(text)  # (B, T, r)
        bins = adaptive_pool_weights(text_mask, self.length)  # (B, L, T)
        if self.kind == "appg":
            w = bins.to(z.dtype)
            pooled = (w @ z) / w.sum(-1, keepdim=True)  # (B, L, r)
        else:
            masked = z[:, None, :, :].masked_fill(~bins[..., None], float("-inf"))  # (B, L, T, r)
            pooled = masked.amax(dim=2)  # (B, L, r)
        return self.dropout(self.up(torch.relu(pooled)))  # (B, L, d)


@register_method("late", LateConfig)
class LatePrompt(PromptMethod):
    def __init__(self, config: LateConfig, info: BackboneInfo) -> None:
        super().__init__(config, info)
        self.generator = PromptGenerator(
            config.generator, info.hidden_size, config.bottleneck, config.length, config.dropout, info.causal
        )

    @property
    def length(self) -> int:
        return self.config.length

    @property
    def start_layer(self) -> int:
        return self.config.layer

    def init_parameters(self, word_embeddings: nn.Embedding, generator: torch.Generator) -> None:
        self.generator.init_parameters(generator)

    def layout(self, ctx: BatchContext) -> SlotLayout:
        return SlotLayout.uniform(ctx.input_ids.shape[0], self.length, self.config.layer, ctx.input_ids.device)

    def inject(self, layer: int, slots: Tensor | None, text: Tensor, ctx: BatchContext) -> Tensor | None:
        if layer != self.config.layer:
            return None
        return self.generator(text, ctx.text_mask)
