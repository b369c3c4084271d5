"""Deep prompts: free prompts at any layer set S (0 = the input embeddings), in one of two forms.

- `hidden`: L prompt tokens. At each layer in S the prompt slots are *replaced* by that layer's
  vectors; at layers above the first one that are not in S, the slots carry on as ordinary
  tokens (the propagated prompt). S = {0} is prompt tuning (Lester et al. 2021,
  arXiv:2104.08691).
- `kv`: P-tuning v2 (Liu et al. 2021, arXiv:2110.07602) and peft's prefix tuning. At each layer
  in S the block's self-attention prepends L learned keys and values to the text's; the text
  attends to them and nothing flows on (no prompt tokens run through the blocks, so it costs less
  than `hidden`). As in a KV cache the prefix takes logical positions 0..L-1 and the text starts
  at L. Optional reparametrisation as in P-tuning v2: Embedding(L, d) -> Linear(d, r) -> tanh ->
  Linear(r, |S| x 2 x kv width).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from autoprompt_search.backbones import BackboneInfo, KvPrefix
from autoprompt_search.errors import require
from autoprompt_search.methods.base import BatchContext, PromptMethod, SlotLayout, check_layers
from autoprompt_search.methods.noise import SeededDropout
from autoprompt_search.methods.registry import register_method

POSITIONS = ("prefix", "split")
FORMS = ("hidden", "kv")
INITS = ("vocab", "normal")


@dataclass
class DeepConfig:
    """Free prompts of `length` vectors at every block index in `layers`."""

    layers: tuple[int, ...] = (0,)  # block indices; 0 = input embeddings, N-1 = the last block
    length: int = 20  # prompt length L
    position: str = "prefix"  # prefix | split
    split_at: int = 0  # with position=split: P[j:] + input + P[:j] at j = split_at, 1 <= j <= L
    reparam: int = 0  # hidden size of an MLP reparametrisation (P-tuning v2); 0 = off
    form: str = "hidden"  # hidden: prompt tokens | kv: key/value prefixes in attention (P-tuning v2)
    dropout: float = 0.0  # dropout on the prompt (hidden) or on the prefix keys and values (kv)
    init: str = "vocab"  # an input (layer 0) hidden prompt: sampled vocabulary embeddings | N(0, 1) (peft's RANDOM)

    def __post_init__(self) -> None:
        self.layers = tuple(sorted(int(i) for i in self.layers))
        require(len(self.layers) > 0, "method.layers: empty layer set; give at least one block index (0 = input)")
        require(len(set(self.layers)) == len(self.layers), f"method.layers: duplicate index in {list(self.layers)}")
        require(isinstance(self.length, int) and self.length > 0, f"method.length: must be > 0, got {self.length}")
        require(self.position in POSITIONS, f"method.position: {self.position!r} unknown; use prefix or split")
        if self.position == "split":
            require(
                1 <= self.split_at <= self.length,
                f"method.split_at: {self.split_at} must be in 1..{self.length} with position=split",
            )
        else:
            require(
                self.split_at == 0, "method.split_at: only used with position=split; set position: split or drop it"
            )
        require(self.reparam >= 0, f"method.reparam: must be >= 0 (0 = off), got {self.reparam}")
        require(self.form in FORMS, f"method.form: {self.form!r} unknown; use hidden or kv")
        require(
            self.form == "hidden" or self.position == "prefix",
            "method.position: a kv prefix sits before the text only; use position prefix or form hidden",
        )
        require(0.0 <= self.dropout < 1.0, f"method.dropout: must be in [0, 1), got {self.dropout}")
        require(self.init in INITS, f"method.init: {self.init!r} unknown; use vocab or normal")
        require(
            self.init == "vocab" or (self.form == "hidden" and self.layers[0] == 0),
            "method.init: chooses how an input prompt starts (hidden form at layer 0); drop it for this prompt",
        )

    def check(self, info: BackboneInfo) -> None:
        check_layers(self.layers, info)


@register_method("deep", DeepConfig)
class DeepPrompt(PromptMethod):
    def __init__(self, config: DeepConfig, info: BackboneInfo) -> None:
        super().__init__(config, info)
        d, n, length = info.hidden_size, len(config.layers), config.length
        self.slot_of = {layer: i for i, layer in enumerate(config.layers)}
        self.kv = config.form == "kv"
        self.dropout = SeededDropout(config.dropout)
        if self.kv:
            heads, head_dim = info.kv_shape
            width = heads * head_dim
            if config.reparam:  # P-tuning v2: an embedding through an MLP gives every layer's keys and values
                self.prefix_embedding = nn.Parameter(torch.zeros(length, d))  # (L, d)
                self.reparam = nn.Sequential(nn.Linear(d, config.reparam), nn.Tanh())
                self.prefix_out = nn.Linear(config.reparam, n * 2 * width)
            else:
                self.prefix = nn.Parameter(torch.zeros(n, 2, length, width))  # (|S|, keys|values, L, H_kv*hd)
            return
        self.prompts = nn.Parameter(torch.zeros(n, length, d))  # (|S|, L, d)
        self.reparam = (
            nn.Sequential(nn.Linear(d, config.reparam), nn.Tanh(), nn.Linear(config.reparam, d))
            if config.reparam
            else None
        )

    @property
    def length(self) -> int:
        """Prompt slots in the sequence: none in the kv form (its prefix lives inside attention)."""
        return 0 if self.kv else self.config.length

    @property
    def start_layer(self) -> int:
        return self.config.layers[0]

    def init_parameters(self, word_embeddings: nn.Embedding, generator: torch.Generator) -> None:
        if self.kv:
            self._init_prefix(generator)
            return
        vocab = word_embeddings.weight
        n, length, d = self.prompts.shape
        with torch.no_grad():
            # Lester et al.: sampled vocabulary embeddings train better than random at the input.
            ids = torch.randint(0, vocab.shape[0], (length,), generator=generator)
            self.prompts[0].copy_(vocab[ids].float())
            # Deeper layers see LayerNorm'd / residual states of unit scale.
            self.prompts[1:].copy_(torch.randn(n - 1, length, d, generator=generator))
            if self.config.layers[0] != 0 or self.config.init == "normal":
                self.prompts[0].copy_(torch.randn(length, d, generator=generator))
            if self.reparam is not None:
                for m in self.reparam:
                    if isinstance(m, nn.Linear):
                        bound = m.in_features**-0.5
                        m.weight.uniform_(-bound, bound, generator=generator)
                        m.bias.zero_()

    def _init_prefix(self, generator: torch.Generator) -> None:
        # As peft's PrefixEncoder: N(0, 1) prefixes or embedding, uniform fan-in Linear weights.
        with torch.no_grad():
            if self.config.reparam:
                self.prefix_embedding.copy_(torch.randn(self.prefix_embedding.shape, generator=generator))
                for m in (self.reparam[0], self.prefix_out):
                    bound = m.in_features**-0.5
                    m.weight.uniform_(-bound, bound, generator=generator)
                    m.bias.uniform_(-bound, bound, generator=generator)
            else:
                self.prefix.copy_(torch.randn(self.prefix.shape, generator=generator))

    def layout(self, ctx: BatchContext) -> SlotLayout:
        b, device = ctx.input_ids.shape[0], ctx.input_ids.device
        if self.kv:
            return SlotLayout.uniform(b, 0, self.config.layers[0], device, offset=self.config.length)
        return SlotLayout.uniform(b, self.length, self.config.layers[0], device, self.config.split_at)

    def inject(self, layer: int, slots: Tensor | None, text: Tensor, ctx: BatchContext) -> Tensor | None:
        if self.kv:  # no prompt tokens: an empty slot block where the prompt starts
            return text.new_zeros(text.shape[0], 0, text.shape[-1]) if slots is None else None
        index = self.slot_of.get(layer)
        if index is None:
            return None
        prompt = self.layer_prompt(index)  # (L, d)
        return self.dropout(prompt.to(text.dtype).expand(text.shape[0], -1, -1))  # (B, L, d)

    def layer_prompt(self, index: int) -> Tensor:
        """The hidden-state prompt (L, d) of the `index`-th prompted layer, no dropout."""
        prompt = self.prompts[index]
        return prompt if self.reparam is None else prompt + self.reparam(prompt)

    def layer_prefix(self, index: int) -> Tensor:
        """The keys and values (2, L, H_kv*hd) of the `index`-th prompted layer, no dropout."""
        if not self.config.reparam:
            return self.prefix[index]
        heads, head_dim = self.info.kv_shape
        width = heads * head_dim
        z = self.reparam(self.prefix_embedding)  # (L, r)
        rows = slice(index * 2 * width, (index + 1) * 2 * width)  # this layer's outputs only
        kv = nn.functional.linear(z, self.prefix_out.weight[rows], self.prefix_out.bias[rows])  # (L, 2*width)
        return kv.view(self.config.length, 2, width).transpose(0, 1)  # (2, L, width)

    def kv_prefix(self, layer: int, ctx: BatchContext) -> KvPrefix | None:
        index = self.slot_of.get(layer)
        if not self.kv or index is None:
            return None
        b, length = ctx.input_ids.shape[0], self.config.length
        heads, head_dim = self.info.kv_shape
        kv = self.dropout(self.layer_prefix(index).expand(b, -1, -1, -1))  # (B, 2, L, width), a mask per row
        kv = kv.view(b, 2, length, heads, head_dim).transpose(2, 3)  # (B, 2, H_kv, L, hd)
        live = torch.ones(b, length, dtype=torch.bool, device=kv.device)
        return KvPrefix(kv[:, 0], kv[:, 1], live)
