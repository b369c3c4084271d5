"""Dynamic prompting (Yang et al. 2023, arXiv:2303.02909): position, length and pool chosen per instance.

An input-level prompt of up to L vectors whose layout is decided per row through
straight-through Gumbel-Softmax (hard one-hots y in the forward pass, soft gradients):

- position j in 0..L: the row reads `P[j:] + input + P[:j]` (j = 0: a prefix);
- length n in 0..L: P[:n] is kept and the slots after it hold zero vectors, which stay visible
  to attention with their position embeddings (as in DP's public code), so their learned
  values cannot change the output;
- pool: a softmax mixture of k prompt sets.

Instance level: small networks read x, the mean-pooled last hidden state of a frozen pass over
the text alone (the engine's `summary`): Linear(d, L+1) for position and for length, and
Linear(d, k) -> tanh -> softmax for the pool. Task level: one learned logit vector each.
Evaluation takes the argmax (deterministic). The Gumbel temperature anneals exponentially from
`tau` to `tau_min` over the first `anneal_until` of the run's steps (a function of the budget),
or at a fixed per-step rate `anneal` when that is set.

The estimator compares options, as DP's code does: the input embeddings are the one-hot mixture
of every option's arrangement, sum_j y_j * embed(arrangement j) (for position and length each,
the other choice held at its sample), so the forward pass equals the chosen arrangement's and the
gradient with respect to y_j is the first-order effect of arrangement j. This needs the
arrangement to show in the embeddings: on backbones whose positions enter only inside attention
(rotary: the Llama family) the position options cannot be mixed at the input, and the position
selector falls back to scaling the chosen prompt by the sample's value at the chosen index (1 in
the forward pass, GDAS's estimator), which learns only whether the chosen position helps. On
those backbones the embeddings are the slot vectors themselves, so the length option 0 (no
prompt) is the zero baseline with a zero gradient while the other lengths are compared with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autoprompt_search.backbones import BackboneInfo
from autoprompt_search.errors import require
from autoprompt_search.methods.base import BatchContext, PromptMethod, SlotLayout
from autoprompt_search.methods.noise import NoiseSource
from autoprompt_search.methods.registry import register_method

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
    split_at: int = 0  # position j when it is not chosen: P[j:] + input + P[:j]
    tau: float = 1.0  # initial Gumbel-Softmax temperature
    tau_min: float = 0.5
    anneal_until: float = 0.75  # tau reaches tau_min after this fraction of the run's steps
    anneal: float = 0.0  # > 0: a fixed per-step decay rate of tau instead (the run's length ignored)

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
        require(0 <= self.split_at <= self.length, f"method.split_at: must be in 0..{self.length}, got {self.split_at}")
        require(
            self.split_at == 0 or "position" not in self.choose,
            "method.split_at: a fixed position conflicts with choosing it; drop split_at or 'position' from choose",
        )
        require(
            0 < self.tau_min <= self.tau, f"method.tau_min: need 0 < tau_min <= tau, got {self.tau_min}, {self.tau}"
        )
        require(self.anneal >= 0, f"method.anneal: must be >= 0, got {self.anneal}")
        require(0 < self.anneal_until <= 1, f"method.anneal_until: must be in (0, 1], got {self.anneal_until}")

    def check(self, info: BackboneInfo) -> None:
        return None


@dataclass
class Choices:
    """One forward pass's decisions, per row."""

    position: Tensor  # (B,) long, j
    length: Tensor  # (B,) long, n
    weights: Tensor  # (B, k) pool mixture
    position_y: Tensor | None  # (B, L+1) straight-through one-hot of the position (None: fixed)
    length_y: Tensor | None  # (B, L+1) straight-through one-hot of the length (None: fixed)
    scale: Tensor  # (B,) 1.0 in value; the position's gradient where positions cannot be mixed (rotary)


@register_method("dp", DpConfig)
class DynamicPrompt(PromptMethod):
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
        self.noise = NoiseSource()  # the Gumbel noise (noise.py says why not torch's global stream)

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

    def on_step(self, step: int, steps: int) -> None:
        cfg = self.config
        rate = cfg.anneal or math.log(cfg.tau / cfg.tau_min) / max(1.0, cfg.anneal_until * steps)
        self.tau = max(cfg.tau_min, cfg.tau * math.exp(-rate * step))

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
        """(B, options) hard one-hot: a straight-through Gumbel sample in training (one-hot in
        value, the tempered softmax's gradient), the argmax in eval."""
        if not self.training:
            return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(torch.float32)
        noise = self.noise.generator(logits.device)
        gumbel = -torch.empty_like(logits, dtype=torch.float32).exponential_(generator=noise).log()
        soft = ((logits.float() + gumbel) / self.tau).softmax(-1)  # (B, options)
        hard = F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft.dtype)
        return hard - soft.detach() + soft

    def decide(self, ctx: BatchContext) -> Choices:
        cfg = self.config
        b, device = ctx.input_ids.shape[0], ctx.input_ids.device
        scale = torch.ones(b, device=device)
        picked, samples = {}, {}
        for choice, fixed in (("position", cfg.split_at), ("length", cfg.length)):
            samples[choice] = None
            if choice in cfg.choose:
                y = self.one_hot(self.choice_logits(choice, ctx))  # (B, L+1)
                index = y.argmax(-1)  # (B,)
                samples[choice] = y
                if choice == "position" and not self.info.positions_in_embeddings:
                    scale = y.gather(1, index[:, None]).squeeze(1)  # GDAS fallback (see the module doc)
            else:
                index = torch.full((b,), fixed, dtype=torch.long, device=device)
            picked[choice] = index
        if "pool" in cfg.choose and cfg.pool > 1:
            weights = torch.softmax(self.choice_logits("pool", ctx), -1)  # (B, k)
        else:
            weights = torch.ones(b, 1, device=device)
        return Choices(picked["position"], picked["length"], weights, samples["position"], samples["length"], scale)

    # ---- engine hooks ----------------------------------------------------------------------
    def layout(self, ctx: BatchContext) -> SlotLayout:
        self.choices = c = self.decide(ctx)
        slot = torch.arange(self.length, device=ctx.input_ids.device)[None, :]  # (1, L)
        live = torch.ones(c.length.shape[0], self.length, dtype=torch.bool, device=slot.device)  # zeros stay visible
        after = slot < c.position[:, None]  # (B, L): P[:j] after the input
        start = torch.zeros_like(c.length)
        return SlotLayout(live, after, start)

    def mixed_prompt(self) -> Tensor:
        """(B, L, d): the pool mixture of the prompt sets for each row."""
        c = self.choices
        assert c is not None, "layout() runs before inject()"
        return torch.einsum("bk,kld->bld", c.weights, self.prompts)

    def inject(self, layer: int, slots: Tensor | None, text: Tensor, ctx: BatchContext) -> Tensor | None:
        if layer != 0:
            return None
        c = self.choices
        assert c is not None, "layout() runs before inject()"
        slot = torch.arange(self.length, device=text.device)[None, :]  # (1, L)
        kept = (slot < c.length[:, None]).to(torch.float32)  # (B, L): P[:n], zeros after it
        prompt = self.mixed_prompt() * kept[..., None]  # (B, L, d)
        return (prompt * c.scale[:, None, None]).to(text.dtype)

    def embed_input(self, embed: Callable[..., Tensor], after: Tensor) -> Tensor:
        """sum_j y_j * embed(option j) per chosen dimension: the chosen arrangement's embeddings
        in value, and a gradient for every option's y_j (the module doc says why and where not)."""
        c = self.choices
        assert c is not None, "layout() runs before embed_input()"
        if not self.training:
            return embed(after)  # (B, L+T, d)
        # Every option gets the embedding stage's dropout mask of the chosen arrangement: dropout is
        # linear for a fixed mask, so the mixture is one dropout sample of the chosen arrangement in
        # value (with a fresh mask per option it was opt_pos + opt_len - chosen, not a sample).
        embed = same_dropout_mask(embed, after.device)
        chosen = embed(after)  # (B, L+T, d)
        mixed = chosen
        slot = torch.arange(self.length, device=after.device)[None, :]  # (1, L)
        if c.position_y is not None and self.info.positions_in_embeddings:
            options = [embed((slot < j).expand_as(after)) for j in range(self.length + 1)]
            mixed = mixed + _mix(c.position_y, options) - chosen
        if c.length_y is not None:
            prompt = self.mixed_prompt() * c.scale[:, None, None]  # (B, L, d)
            options = [embed(after, (prompt * (slot < n)[..., None]).to(chosen.dtype)) for n in range(self.length + 1)]
            mixed = mixed + _mix(c.length_y, options) - chosen
        return mixed


def same_dropout_mask(embed: Callable[..., Tensor], device: torch.device) -> Callable[..., Tensor]:
    """`embed` with the random state rewound before each call: calls on inputs of one shape draw
    the same dropout mask, and the stream ends where one call leaves it."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def call(*args: Tensor | None) -> Tensor:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
        return embed(*args)

    return call


def _mix(y: Tensor, options: list[Tensor]) -> Tensor:
    """sum_j y[:, j] * options[j]: y (B, J) one-hot in value, options J x (B, S, d)."""
    return torch.einsum("bj,jbsd->bsd", y.to(options[0].dtype), torch.stack(options))
