"""Frozen Hugging Face backbones behind one small adapter per model family.

An adapter says where a family keeps its word embeddings, the rest of its embedding stage
(absolute positions, token types, LayerNorm), its list of transformer blocks, its final norm
and its LM head, and how a block wants its attention mask and positions. The prompt engine
(`engine/model.py`) runs the blocks one by one through this interface and never touches a family's
internals.

Positions are *logical*: the engine gives every token (prompt slots and text) a position id per
row, and each adapter turns them into what its family uses: absolute position embeddings (BERT,
RoBERTa, MPNet, GPT-2), rotary cos/sin (Llama, Qwen, Mistral) or MPNet's relative bias.
Attention masks arrive as one boolean matrix per row, `visible[b, q, k]` (True = query q may
attend key k); the adapter formats it for the family's attention code.


One file per family (`bert.py`, `roberta.py`, `mpnet.py`, `gpt2.py`, `llama.py`); `base.py` holds the
interface and the key/value prefix attention, `loading.py` finds a checkpoint's family and loads it.
"""

from autoprompt_search.backbones.base import Backbone, KvPrefix, LoraSite, LoraUpdate
from autoprompt_search.backbones.loading import (
    FAMILIES,
    PACKAGED_MODELS,
    BackboneInfo,
    ModelSource,
    backbone_from_config,
    backbone_info,
    family_for,
    load_backbone,
    load_config,
    num_layers_of,
    resolve_model,
    supported_model_types,
)

__all__ = [
    "FAMILIES",
    "PACKAGED_MODELS",
    "Backbone",
    "BackboneInfo",
    "KvPrefix",
    "LoraSite",
    "LoraUpdate",
    "ModelSource",
    "backbone_from_config",
    "backbone_info",
    "family_for",
    "load_backbone",
    "load_config",
    "num_layers_of",
    "resolve_model",
    "supported_model_types",
]
