"""A trial's workspace: the frozen model, tokenizer and tokenised data, and the model built on it.

Everything a run needs that does not change with the prompt configuration, so several runs (a
fused group, a comparison's arms) share one load; plus how batches reach the device (through the
frozen-prefix cache where one applies).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from autoprompt_search.backbones import Backbone, BackboneInfo, load_backbone, resolve_model
from autoprompt_search.config import ExperimentConfig
from autoprompt_search.data import TaskData, TokenizedSplit, get_task, load_task_data, tokenize
from autoprompt_search.engine.batch import Batch
from autoprompt_search.engine.heads import ClassifierHead, LabelWordHead, label_word_ids
from autoprompt_search.engine.model import PromptedModel
from autoprompt_search.engine.precision import autocast
from autoprompt_search.engine.prefix_cache import PrefixFeeder, cache_dtype, cache_root
from autoprompt_search.errors import ConfigError
from autoprompt_search.methods import build_method
from autoprompt_search.methods.noise import seed_noise


@dataclass
class Workspace:
    """Everything a trial needs that does not change with the prompt config: reuse it across trials."""

    backbone: Backbone
    tokenizer: Any
    data: TaskData
    splits: dict[str, TokenizedSplit] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: {name} requested but no GPU is visible here; use --device cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"train.device: {name} does not exist ({torch.cuda.device_count()} GPUs); pick another")
        return torch.device(name)
    if name != "cpu":
        raise ConfigError(f"train.device: {name!r} unknown; use auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def load_tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    source = resolve_model(model)
    try:
        return AutoTokenizer.from_pretrained(source.path, **source.kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"model: cannot load a tokenizer from {source.path!r}; give a model directory with one"
        ) from exc


def model_workspace(cfg: ExperimentConfig, backbone: Backbone | None = None, tokenizer: Any = None) -> Workspace:
    """The model and tokenizer of a configuration (loaded unless given), checked to fit it, and its
    task; no data (no splits): what a trained run needs to predict."""
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model)
    backbone = backbone if backbone is not None else load_backbone(cfg.model, lm_head=cfg.head.kind == "label_words")
    check_fits(cfg, BackboneInfo.of(backbone))
    return Workspace(backbone, tokenizer, TaskData(get_task(cfg.data.task), {}, {}))


def prepare_workspace(cfg: ExperimentConfig, backbone: Backbone | None = None, tokenizer: Any = None) -> Workspace:
    """`model_workspace` with the task's data loaded and tokenised (cached): what a run trains on."""
    ws = model_workspace(cfg, backbone, tokenizer)
    ws.data = load_task_data(cfg.data)
    append_mask = cfg.head.kind == "label_words" and not BackboneInfo.of(ws.backbone).causal
    if append_mask and ws.tokenizer.mask_token_id is None:
        raise ConfigError("head.kind: label_words on an encoder needs a tokenizer with a mask token")
    for name, examples in ws.data.splits.items():
        ws.splits[name] = tokenize(ws.tokenizer, examples, cfg.data.max_length, append_mask)
    return ws


def check_fits(cfg: ExperimentConfig, info: BackboneInfo) -> None:
    """The method fits the model: layer indices exist, text + prompt fit its positions."""
    cfg.method.check(info)
    length = getattr(cfg.method, "length", 0)
    if info.max_positions is not None and cfg.data.max_length + length > info.max_positions:
        raise ConfigError(
            f"data.max_length: {cfg.data.max_length} + prompt length {length} exceeds the model's "
            f"{info.max_positions} positions; lower --max-length"
        )


def build_model(cfg: ExperimentConfig, ws: Workspace) -> PromptedModel:
    """The trainable model for `cfg`, parameters initialised from `cfg.train.seed`."""
    info = BackboneInfo.of(ws.backbone)
    num_classes = len(ws.data.task.labels)
    method = build_method(cfg.method, info)
    if cfg.head.kind == "label_words":
        words = cfg.head.label_words or ws.data.task.label_words
        if len(words) != num_classes:
            raise ConfigError(f"head.label_words: {len(words)} words for {num_classes} classes; give one per class")
        head = LabelWordHead(ws.backbone, label_word_ids(ws.tokenizer, tuple(words)))
        if not info.causal:
            head.mask_token_id = ws.tokenizer.mask_token_id  # read the appended mask token
    else:
        if cfg.head.pooling == "first" and info.causal:
            raise ConfigError("head.pooling: first reads a position that sees nothing after it in a decoder; use token")
        head = ClassifierHead(ws.backbone, num_classes, cfg.head.pooler, cfg.head.pooling, cfg.head.dropout)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    method.init_parameters(ws.backbone.word_embeddings, generator)
    # Dropout masks and Gumbel noise: streams of the run's own (the method's first, then the head's).
    seed_noise(nn.ModuleList([method, head]), cfg.train.seed)
    head.init_parameters(generator)
    return PromptedModel(ws.backbone, method, head)


def count_trainable(cfg: ExperimentConfig, info: BackboneInfo, num_classes: int) -> int:
    """The trainable parameters `build_model` gives `cfg`, counted without weights (the method built
    on the meta device): what a study's parameter budget compares before a trial is trained. For
    SPT-DARTS with `search` it is the search model's count, which bounds the retrained one."""
    with torch.device("meta"):
        method = build_method(cfg.method, info)
    head = (info.hidden_size + 1) * num_classes if cfg.head.kind == "classifier" else 0  # Linear(d, C)
    return method.num_trainable() + head


def prefix_feeder(
    cfg: ExperimentConfig, ws: Workspace, model: PromptedModel, device: torch.device
) -> PrefixFeeder | None:
    """A frozen-prefix cache for this model, or None where it is off or nothing is frozen."""
    layer = min(model.first_layer, model.backbone.num_layers)
    if layer == 0 and model.method.needs_summary:
        layer = model.backbone.num_layers  # dynamic prompting's frozen summary pass
    if not cfg.train.prefix_cache or layer == 0:
        return None
    precision = cfg.train.precision
    return PrefixFeeder(
        model,
        ws.splits,
        layer,
        device,
        cache_dtype(device, precision),
        int(cfg.train.prefix_cache_gb * 2**30),
        cache_root(),
        lambda: autocast(device, precision),
    )


def batch_fetcher(
    feeder: PrefixFeeder | None, ws: Workspace, name: str, device: torch.device
) -> Callable[[Tensor], Batch]:
    """rows (B,) -> the device batch of split `name`, through the cache when there is one."""
    if feeder is not None:
        return lambda rows: feeder.batch(name, rows)
    split = ws.splits[name]
    return lambda rows: split.batch(rows).to(device)
