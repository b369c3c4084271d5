"""Dynamic prompting (Yang et al. 2023, arXiv:2303.02909): position, length and pool chosen per instance.

An input-level prompt of up to L vectors whose layout is decided per row through
straight-through Gumbel-Softmax (hard one-hots in the forward pass, soft gradients):

- position j in 0..L: the row reads `P[j:] + input + P[:j]` (j = 0: a prefix);
- length n in 0..L: only P[:n] is kept; the dropped slots are *masked out of attention* (the
  public code leaves them visible), so their values cannot change the output;
- pool: a softmax mixture of k prompt sets.

Instance level: small networks read x, the mean-pooled last hidden state of a frozen pass over
the text alone (the engine's `summary`): Linear(d, L+1) for position and for length, and
Linear(d, k) -> tanh -> softmax for the pool. Task level: one learned logit vector each.
Evaluation takes the argmax (deterministic). The Gumbel temperature anneals as
tau = max(tau_min, tau * exp(-anneal * step)).

A layout choice cannot carry a gradient through position ids or masks, so (as GDAS does for
operations) the chosen prompt is scaled by the hard sample's value at the chosen index: 1 in
the forward pass, the soft probability's gradient in the backward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import BackboneInfo
from ..errors import require
from .base import BatchContext, PromptMethod, SlotLayout

LEVELS = ("instance", "task")
CHOICES = ("position", "length", "pool")
FULL_LENGTH_LOGIT = 1.0  # initial preference for keeping all L slots


@dataclass
class DpConfig:
    """An input prompt of up to `length` vectors whose position, length and pool mix are chosen."""

    length: int = 10  # L, the longest prompt
    pool: int = 4  # k prompt sets mixed (1 = a single prompt)
    level: str = "instance"  # instance (networks on a pooled first pass) | task (learned logits)
    choose: tuple[str, ...] = CHOICES  # which of position, length, pool are chosen; the rest fixed
    split: int = 0  # position j when it is not chosen: P[j:] + input + P[:j]
    tau: float = 1.0  # initial Gumbel-Softmax temperature
    tau_min: float = 0.5
    anneal: float = 3e-3  # per-step decay rate of the temperature

    def __post_init__(self) -> None:
        self.choose = tuple(self.choose)
        require(isinstance(self.length, int) and self.length > 0, f"method.length: must be > 0, got {self.length}")
        require(self.pool >= 1, f"method.pool: must be >= 1, got {self.pool}")
        require(self.level in LEVELS, f"method.level: {self.level!r} unknown; use instance or task")
        bad = [c for c in self.choose if c not in CHOICES]
        require(not bad, f"method.choose: {bad[0] if bad else ''!r} unknown; use any of {', '.join(CHOICES)}")
        require(len(set(self.choose)) == len(self.choose), f"method.choose: duplicate entry in {list(self.choose)}")
        require(
            self.pool == 1 or "pool" in self.choose,
            f"method.pool: {self.pool} prompt sets need 'pool' in method.choose (or set pool: 1)",
        )
        require(0 <= self.split <= self.length, f"method.split: must be in 0..{self.length}, got {self.split}")
        require(
            self.split == 0 or "position" not in self.choose,
            "method.split: a fixed position conflicts with choosing it; drop split or 'position' from choose",
        )
        require(
            0 < self.tau_min <= self.tau, f"method.tau_min: need 0 < tau_min <= tau, got {self.tau_min}, {self.tau}"
        )
        require(self.anneal >= 0, f"method.anneal: must be >= 0, got {self.anneal}")

    def check(self, info: BackboneInfo) -> None:
        return None


@dataclass
class Choices:
    """One forward pass's decisions, per row."""

    position: Tensor  # (B,) long, j
    length: Tensor  # (B,) long, n
    weights: Tensor  # (B, k) pool mixture
    scale: Tensor  # (B,) 1.0 in value; carries the straight-through gradients


class DynamicPrompt(PromptMethod):
    name = "dp"
    config_class = DpConfig

    def __init__(self, config: DpConfig, info: BackboneInfo) -> None:
        super().__init__(config, info)
        d, length, k = info.hidden_size, config.length, config.pool
        self.prompts = nn.Parameter(torch.zeros(k, length, d))  # (k, L, d)
        self.selectors = nn.ModuleDict()
        self.logits = nn.ParameterDict()
        sizes = {"position": length + 1, "length": length + 1, "pool": k}
        for choice in config.choose:
            if config.level == "instance":
                self.selectors[choice] = nn.Linear(d, sizes[choice])
            else:
                self.logits[choice] = nn.Parameter(torch.zeros(sizes[choice]))
        self.tau = config.tau
        self.choices: Choices | None = None  # the last forward pass's (read by tests and logs)

    @property
    def needs_summary(self) -> bool:  # type: ignore[override]
        return self.config.level == "instance"

    @property
    def length(self) -> int:
        return self.config.length

    @property
    def start_layer(self) -> int:
        return 0

    def init_parameters(self, word_embeddings: nn.Embedding, generator: torch.Generator) -> None:
        vocab = word_embeddings.weight
        k, length, _ = self.prompts.shape
        with torch.no_grad():
            ids = torch.randint(0, vocab.shape[0], (k, length), generator=generator)
            self.prompts.copy_(vocab[ids].float())  # vocabulary init, as for prompt tuning
            for m in self.selectors.values():
                bound = m.in_features**-0.5
                m.weight.uniform_(-bound, bound, generator=generator)
                m.bias.zero_()
            # Start from the whole prompt (plain prompt tuning), not from a tie that argmax breaks
            # towards length 0 (no prompt at all).
            if "length" in self.selectors:
                self.selectors["length"].bias[-1] = FULL_LENGTH_LOGIT
            if "length" in self.logits:
                self.logits["length"][-1] = FULL_LENGTH_LOGIT

    def on_step(self, step: int) -> None:
        cfg = self.config
        self.tau = max(cfg.tau_min, cfg.tau * math.exp(-cfg.anneal * step))

    # ---- choices ---------------------------------------------------------------------------
    def choice_logits(self, choice: str, ctx: BatchContext) -> Tensor:
        """(B, options) logits of one choice."""
        b = ctx.input_ids.shape[0]
        if self.config.level == "task":
            return self.logits[choice][None, :].expand(b, -1)
        assert ctx.summary is not None, "instance-level dynamic prompting needs the engine's summary pass"
        logits = self.selectors[choice](ctx.summary.float())  # (B, options)
        return torch.tanh(logits) if choice == "pool" else logits

    def one_hot(self, logits: Tensor) -> Tensor:
        """(B, options) hard one-hot: a straight-through Gumbel sample in training, the argmax in eval."""
        if self.training:
            return F.gumbel_softmax(logits.float(), tau=self.tau, hard=True)
        return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(torch.float32)

    def decide(self, ctx: BatchContext) -> Choices:
        cfg = self.config
        b, device = ctx.input_ids.shape[0], ctx.input_ids.device
        scale = torch.ones(b, device=device)
        picked = {}
        for choice, fixed in (("position", cfg.split), ("length", cfg.length)):
            if choice in cfg.choose:
                y = self.one_hot(self.choice_logits(choice, ctx))  # (B, L+1)
                index = y.argmax(-1)  # (B,)
                scale = scale * y.gather(1, index[:, None]).squeeze(1)
            else:
                index = torch.full((b,), fixed, dtype=torch.long, device=device)
            picked[choice] = index
        if "pool" in cfg.choose and cfg.pool > 1:
            weights = torch.softmax(self.choice_logits("pool", ctx), -1)  # (B, k)
        else:
            weights = torch.ones(b, 1, device=device)
        return Choices(picked["position"], picked["length"], weights, scale)

    # ---- engine hooks ----------------------------------------------------------------------
    def layout(self, ctx: BatchContext) -> SlotLayout:
        self.choices = c = self.decide(ctx)
        slot = torch.arange(self.length, device=ctx.input_ids.device)[None, :]  # (1, L)
        live = slot < c.length[:, None]  # (B, L): P[:n] kept
        after = slot < c.position[:, None]  # (B, L): P[:j] after the input
        start = torch.zeros_like(c.length)
        return SlotLayout(live, after, start)

    def inject(self, layer: int, slots: Tensor | None, text: Tensor, ctx: BatchContext) -> Tensor | None:
        if layer != 0:
            return None
        c = self.choices
        assert c is not None, "layout() runs before inject()"
        prompt = torch.einsum("bk,kld->bld", c.weights, self.prompts)  # (B, L, d)
        return (prompt * c.scale[:, None, None]).to(text.dtype)
