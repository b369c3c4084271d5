"""Selective prompt tuning (SPT, Zhu and Tan 2023): a learned gate per layer over instance prompts.

Every candidate block i has an LPT-style generator and, while searching, a gate g_i in (0, 1)
(the sigmoid of a learnable logit, or a relaxed-Bernoulli sample of it). The slots entering
block i become `g_i * generate_i(h) + (1 - g_i) * propagated`: a layer either injects its own
instance-aware prompt or keeps the prompt carried up from below. At the first candidate block
nothing is propagated yet, so the gate mixes with a learned free prompt.

SPT-DARTS learns the gate logits bi-level (see `methods/spt_search.py`), then *derives* a layer set (top-k
gates or a threshold) and retrains a fresh configuration with exactly those layers: this
method with `search: false` (a generated prompt at each derived layer, no gates) or deep
prompts there. With `search: false` and one layer this is LPT at that layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from autoprompt_search.backbones import BackboneInfo
from autoprompt_search.errors import ConfigError, require
from autoprompt_search.methods.base import BatchContext, PromptMethod, SlotLayout, check_layers
from autoprompt_search.methods.deep import DeepConfig
from autoprompt_search.methods.late import GENERATOR_AT_0, PromptGenerator, check_generator_options
from autoprompt_search.methods.registry import register_method

GATES = ("sigmoid", "relaxed")
DERIVE_RULES = ("topk", "threshold")
RETRAIN_METHODS = ("spt", "deep")


@dataclass
class SptConfig:
    """Instance prompts at a layer set; with `search`, gated candidates learned SPT-DARTS style."""

    first_layer: ClassVar[int] = 1  # generators read a block's output; search spaces sample from here

    layers: tuple[int, ...] = ()  # candidate blocks (>= 1) when searching, else the prompted blocks; () = 1..N-1
    search: bool = True  # learn the gates (bi-level), derive a layer set, retrain it
    length: int = 5  # prompt length L
    generator: str = "npg"  # npg | appg | mppg (as in LPT)
    bottleneck: int = 128
    dropout: float = 0.1
    gate: str = "sigmoid"  # sigmoid | relaxed (relaxed-Bernoulli samples while training)
    gate_temperature: float = 1.0  # of the relaxed Bernoulli
    gate_init: float = 0.0  # initial gate logit (0: every gate half open)
    arch_lr: float = 0.05  # Adam learning rate of the gate logits
    arch_fraction: float = 0.5  # share of the training set held out for the gate (architecture) steps
    second_order: bool = False  # DARTS' unrolled gradient (finite differences) instead of first order
    budget: float = 0.0  # penalise an expected number of prompted layers above this; 0 = no budget
    budget_weight: float = 1.0
    derive: str = "topk"  # topk | threshold
    top_k: int = 0  # layers kept by topk; 0 = round(budget) if a budget is set, else half the candidates
    threshold: float = 0.5  # gate probability kept by threshold (the best gate is kept if none passes)
    retrain: str = "spt"  # spt: generated prompts at the derived layers | deep: free prompts there
    search_steps: int = 0  # steps of the gate search; 0 = train.steps (the retrain then takes train.steps)

    def __post_init__(self) -> None:
        self.layers = tuple(sorted(int(i) for i in self.layers))
        require(len(set(self.layers)) == len(self.layers), f"method.layers: duplicate index in {list(self.layers)}")
        require(self.search or len(self.layers) > 0, "method.layers: give the prompted layers when search is false")
        require(0 not in self.layers, GENERATOR_AT_0.format(field="method.layers"))
        check_generator_options(self)
        require(self.gate in GATES, f"method.gate: {self.gate!r} unknown; use {' or '.join(GATES)}")
        require(self.gate_temperature > 0, f"method.gate_temperature: must be > 0, got {self.gate_temperature}")
        require(self.arch_lr > 0, f"method.arch_lr: must be > 0, got {self.arch_lr}")
        require(0 < self.arch_fraction < 1, f"method.arch_fraction: must be in (0, 1), got {self.arch_fraction}")
        require(self.budget >= 0, f"method.budget: must be >= 0 (0 = none), got {self.budget}")
        require(self.budget_weight >= 0, f"method.budget_weight: must be >= 0, got {self.budget_weight}")
        require(self.derive in DERIVE_RULES, f"method.derive: {self.derive!r} unknown; use topk or threshold")
        require(self.top_k >= 0, f"method.top_k: must be >= 0 (0 = automatic), got {self.top_k}")
        require(0 < self.threshold < 1, f"method.threshold: must be in (0, 1), got {self.threshold}")
        require(self.retrain in RETRAIN_METHODS, f"method.retrain: {self.retrain!r} unknown; use spt or deep")
        require(self.search_steps >= 0, f"method.search_steps: must be >= 0 (0 = train.steps), got {self.search_steps}")

    def check(self, info: BackboneInfo) -> None:
        check_layers(self.layers, info)
        require(info.num_layers > 1, "method: spt needs a model with at least 2 blocks (generators start at block 1)")
        if self.top_k > len(self.candidates(info.num_layers)):
            raise ConfigError(
                f"method.top_k: {self.top_k} exceeds the {len(self.candidates(info.num_layers))} candidate layers; lower it"
            )

    def candidates(self, num_layers: int) -> tuple[int, ...]:
        return self.layers or tuple(range(1, num_layers))  # generators read a block's output: from 1


@register_method("spt", SptConfig)
class SelectivePrompt(PromptMethod):
    stage = "autoprompt_search.methods.spt_search:gate_search"  # SPT-DARTS' gate search, then retrain

    @classmethod
    def trains_alone(cls, config: SptConfig) -> bool:
        return config.search  # the gate search is a bi-level loop of its own

    def __init__(self, config: SptConfig, info: BackboneInfo) -> None:
        super().__init__(config, info)
        d, length = info.hidden_size, config.length
        self.layers = config.candidates(info.num_layers)
        self.slot_of = {layer: i for i, layer in enumerate(self.layers)}
        self.generators = nn.ModuleList(
            PromptGenerator(config.generator, d, config.bottleneck, length, config.dropout, info.causal)
            for _ in self.layers
        )
        self.gate_logits: nn.Parameter | None = None
        if config.search:
            self.gate_logits = nn.Parameter(torch.full((len(self.layers),), float(config.gate_init)))  # (N_c,)
            self.initial = nn.Parameter(torch.zeros(length, d))  # (L, d) what a closed first gate keeps
        self._gates: Tensor | None = None  # (N_c,) this forward pass's gate values

    @property
    def length(self) -> int:
        return self.config.length

    @property
    def start_layer(self) -> int:
        return self.layers[0]

    def init_parameters(self, word_embeddings: nn.Embedding, generator: torch.Generator) -> None:
        for g in self.generators:
            g.init_parameters(generator)
        if self.config.search:
            with torch.no_grad():
                self.initial.copy_(torch.randn(self.initial.shape, generator=generator))

    # ---- gates ---------------------------------------------------------------------------
    def gate_parameters(self) -> list[nn.Parameter]:
        return [] if self.gate_logits is None else [self.gate_logits]

    def gate_probabilities(self) -> Tensor:
        """(N_c,) P(layer injects its own prompt)."""
        assert self.gate_logits is not None, "gate probabilities exist only while searching"
        return torch.sigmoid(self.gate_logits.detach().float())

    def expected_layers(self) -> Tensor:
        """Differentiable expected number of prompted layers (what a budget constrains)."""
        assert self.gate_logits is not None
        return torch.sigmoid(self.gate_logits).sum()

    def sample_gates(self) -> Tensor:
        logits = self.gate_logits
        assert logits is not None
        if self.training and self.config.gate == "relaxed":
            u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
            return torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / self.config.gate_temperature)
        return torch.sigmoid(logits)

    def derive_layers(self) -> tuple[int, ...]:
        """The layer set the gates choose (sorted block indices, never empty)."""
        probs = self.gate_probabilities()
        cfg = self.config
        if cfg.derive == "threshold":
            chosen = [i for i, p in enumerate(probs.tolist()) if p >= cfg.threshold] or [int(probs.argmax())]
        else:
            k = cfg.top_k or (max(1, round(cfg.budget)) if cfg.budget else math.ceil(len(self.layers) / 2))
            chosen = torch.topk(probs, min(k, len(self.layers))).indices.tolist()
        return tuple(sorted(self.layers[i] for i in chosen))

    def derived_config(self) -> SptConfig | DeepConfig:
        """A fresh configuration with exactly the derived layers."""
        layers, cfg = self.derive_layers(), self.config
        if cfg.retrain == "deep":
            return DeepConfig(layers=layers, length=cfg.length)
        return SptConfig(
            layers=layers,
            search=False,
            length=cfg.length,
            generator=cfg.generator,
            bottleneck=cfg.bottleneck,
            dropout=cfg.dropout,
        )

    # ---- engine hooks ----------------------------------------------------------------------
    def layout(self, ctx: BatchContext) -> SlotLayout:
        if self.gate_logits is not None:
            self._gates = self.sample_gates()  # one draw per forward pass, shared by all rows
        return SlotLayout.uniform(ctx.input_ids.shape[0], self.length, self.start_layer, ctx.input_ids.device)

    def inject(self, layer: int, slots: Tensor | None, text: Tensor, ctx: BatchContext) -> Tensor | None:
        index = self.slot_of.get(layer)
        if index is None:
            return None
        new = self.generators[index](text, ctx.text_mask)  # (B, L, d)
        if self._gates is None:
            return new
        kept = slots if slots is not None else self.initial.to(text.dtype).expand(text.shape[0], -1, -1)
        g = self._gates[index]
        return (g * new + (1 - g) * kept).to(text.dtype)  # (B, L, d)
