"""LoRA (Hu et al. 2021, arXiv:2106.09685) on a layer set: the method most users pick instead of prompts.

At every block in `layers`, each projection named in `targets` computes `W x + (alpha / r) B A x`
with a trainable rank-r pair (A: r x in, B: out x r) and the frozen W. A starts as peft's does
(Kaiming-uniform, a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))), B at zero, so an untrained update
leaves the model as it is; dropout acts on the projection's input, as peft's `lora_dropout`.
Targets are named by role, the same on every family: query, key, value, output (attention output),
ffn_in (the FFN's input projection; Llama's gate and up), ffn_out. On GPT-2, query, key and value
are column blocks of its fused `c_attn` projection.

Like a key/value prefix, it puts no slots in the sequence: blocks below the lowest layer of the set
run frozen (and a frozen-prefix cache serves them), and the text keeps positions 0..T-1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from autoprompt_search.backbones import BackboneInfo, LoraSite, LoraUpdate
from autoprompt_search.errors import ConfigError, require
from autoprompt_search.methods.base import BatchContext, PromptMethod, SlotLayout, check_layers
from autoprompt_search.methods.noise import SeededDropout
from autoprompt_search.methods.registry import register_method

TARGETS = ("query", "key", "value", "output", "ffn_in", "ffn_out")


@dataclass
class LoraConfig:
    """Rank-`rank` updates scaled by `alpha / rank` on the `targets` projections of every block in `layers`."""

    layers: tuple[int, ...] = ()  # block indices; () = every block
    targets: str = "query,value"  # comma-separated projections of TARGETS, or "all"
    rank: int = 8  # r
    alpha: float = 16.0  # the update is scaled by alpha / r
    dropout: float = 0.1  # on each updated projection's input

    def __post_init__(self) -> None:
        if isinstance(self.targets, (list, tuple)):  # a YAML list: one spelling, a search space's categorical's
            self.targets = ",".join(str(t) for t in self.targets)
        require(isinstance(self.targets, str), f"method.targets: expected a string, got {self.targets!r}")
        self.layers = tuple(sorted(int(i) for i in self.layers))
        require(len(set(self.layers)) == len(self.layers), f"method.layers: duplicate index in {list(self.layers)}")
        unknown = [t for t in self.target_list if t not in TARGETS]
        if unknown:
            raise ConfigError(f"method.targets: {unknown[0]!r} unknown; use any of {', '.join(TARGETS)} or all")
        require(len(set(self.target_list)) == len(self.target_list), f"method.targets: duplicate in {self.targets!r}")
        require(
            isinstance(self.rank, int) and not isinstance(self.rank, bool) and self.rank > 0,
            f"method.rank: must be a positive integer, got {self.rank!r}",
        )
        require(self.alpha > 0, f"method.alpha: must be > 0, got {self.alpha}")
        require(0.0 <= self.dropout < 1.0, f"method.dropout: must be in [0, 1), got {self.dropout}")

    @property
    def target_list(self) -> tuple[str, ...]:
        return TARGETS if self.targets == "all" else tuple(t.strip() for t in self.targets.split(","))

    def check(self, info: BackboneInfo) -> None:
        check_layers(self.layers, info)
        missing = [t for t in self.target_list if t not in info.lora_shapes]
        if missing:
            known = ", ".join(info.lora_shapes) or "none"
            raise ConfigError(f"method.targets: this model has no {missing[0]!r} projection; it has {known}")


@register_method("lora", LoraConfig)
class LowRankAdaptation(PromptMethod):
    def __init__(self, config: LoraConfig, info: BackboneInfo) -> None:
        super().__init__(config, info)
        self.layers = config.layers or tuple(range(info.num_layers))
        self.index_of = {layer: i for i, layer in enumerate(self.layers)}
        n, r = len(self.layers), config.rank
        #: the projections updated in each block, in target order: (target, site, in, out)
        self.sites: list[tuple[str, LoraSite, int, int]] = [
            (target, site, fan_in, out)
            for target in config.target_list
            for site, fan_in, out in info.lora_shapes[target]
        ]
        self.down = nn.ParameterList(nn.Parameter(torch.zeros(n, r, fan_in)) for _, _, fan_in, _ in self.sites)
        self.up = nn.ParameterList(nn.Parameter(torch.zeros(n, out, r)) for _, _, _, out in self.sites)
        self.scale = config.alpha / r
        self.dropout = SeededDropout(config.dropout)

    @property
    def length(self) -> int:
        return 0

    @property
    def start_layer(self) -> int:
        return self.layers[0]

    def init_parameters(self, word_embeddings: nn.Embedding, generator: torch.Generator) -> None:
        with torch.no_grad():
            for down in self.down:
                bound = down.shape[-1] ** -0.5  # kaiming_uniform_(a=sqrt(5)) on an (r, in) weight
                down.uniform_(-bound, bound, generator=generator)
                # B stays zero: the update starts at nothing

    def layout(self, ctx: BatchContext) -> SlotLayout:
        return SlotLayout.uniform(ctx.input_ids.shape[0], 0, self.start_layer, ctx.input_ids.device)

    def inject(self, layer: int, slots: Tensor | None, text: Tensor, ctx: BatchContext) -> Tensor | None:
        # no slots: an empty slot block where the updates start
        return text.new_zeros(text.shape[0], 0, text.shape[-1]) if slots is None else None

    def lora_updates(self, layer: int, ctx: BatchContext) -> list[LoraUpdate]:
        index = self.index_of.get(layer)
        if index is None:
            return []
        updates = [
            LoraUpdate(site, self.down[s][index], self.up[s][index] * self.scale, self.dropout)
            for s, (_, site, _, _) in enumerate(self.sites)
        ]
        # One order for the updates of one projection (GPT-2's query, key and value share c_attn),
        # alone or fused: their dropout masks are drawn in it.
        return sorted(updates, key=lambda u: u.site[:2])

    def weight_deltas(self, layer: int) -> list[tuple[LoraSite, Tensor]]:
        """(alpha / r) B A (out, in) of each projection at block `layer`: what merging adds to W."""
        index = self.index_of[layer]
        return [
            (site, self.scale * self.up[s][index] @ self.down[s][index]) for s, (_, site, _, _) in enumerate(self.sites)
        ]

    @torch.no_grad()
    def merge_into(self, blocks: nn.ModuleList) -> None:
        """Fold every update into its frozen weight (W + (alpha / r) B A): the merged-weights model,
        which then computes what this method does (dropout aside) with no update at all."""
        for layer in self.layers:
            for site, delta in self.weight_deltas(layer):  # (out, in)
                module = blocks[layer].get_submodule(site.path)
                rows = slice(site.part * delta.shape[0], (site.part + 1) * delta.shape[0])
                if isinstance(module, nn.Linear):  # weight (out, in)
                    module.weight[rows] += delta.to(module.weight.dtype)
                else:  # transformers' Conv1D (GPT-2): weight (in, out)
                    module.weight[:, rows] += delta.T.to(module.weight.dtype)
