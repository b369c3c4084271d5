"""Train and evaluate one configuration (one trial) end to end.

AdamW with linear warmup and decay, bf16 autocast on GPU, seeded everything, evaluation every
N steps keeping the best trainable state, throughput, NaN and collapse detection.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .backbones import Backbone, BackboneInfo, load_backbone, resolve_model
from .config import ExperimentConfig
from .data import TaskData, TokenizedSplit, load_task_data, tokenize
from .engine import PromptedModel
from .errors import ConfigError
from .heads import ClassifierHead, LabelWordHead, label_word_ids
from .metrics import classification_metrics
from .prompts import build_method


class TrainingError(RuntimeError):
    """A trial that cannot go on (NaN loss); the message says why."""


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


def prepare_workspace(cfg: ExperimentConfig, backbone: Backbone | None = None, tokenizer: Any = None) -> Workspace:
    """Load model, tokenizer and data, validate the config against them, and tokenise (cached)."""
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model)
    backbone = backbone if backbone is not None else load_backbone(cfg.model, lm_head=cfg.head.kind == "label_words")
    info = BackboneInfo.of(backbone)
    cfg.method.check(info)
    length = getattr(cfg.method, "length", 0)
    if info.max_positions is not None and cfg.data.max_length + length > info.max_positions:
        raise ConfigError(
            f"data.max_length: {cfg.data.max_length} + prompt length {length} exceeds the model's "
            f"{info.max_positions} positions; lower --max-length"
        )
    data = load_task_data(cfg.data)
    ws = Workspace(backbone, tokenizer, data)
    append_mask = cfg.head.kind == "label_words" and not info.causal
    if append_mask and tokenizer.mask_token_id is None:
        raise ConfigError("head.kind: label_words on an encoder needs a tokenizer with a mask token")
    for name, examples in data.splits.items():
        ws.splits[name] = tokenize(tokenizer, examples, cfg.data.max_length, append_mask)
    return ws


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
        head = ClassifierHead(ws.backbone, num_classes, cfg.head.pooler)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    if method is not None:
        method.init_parameters(ws.backbone.word_embeddings, generator)
    head.init_parameters(generator)
    return PromptedModel(ws.backbone, method, head)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def eval_batches(split: TokenizedSplit, batch_size: int) -> Iterator[Tensor]:
    """Fixed, length-sorted row batches: cheap padding and the same batches every time."""
    order = torch.argsort(split.lengths, stable=True)
    yield from order.split(batch_size)


@torch.no_grad()
def predict_split(
    model: PromptedModel, split: TokenizedSplit, batch_size: int, device: torch.device, precision: str
) -> Tensor:
    """Predicted class ids (N,) in the split's original order."""
    was_training = model.training
    model.eval()
    preds = torch.empty(len(split), dtype=torch.long)
    for rows in eval_batches(split, batch_size):
        batch = split.batch(rows).to(device)
        with autocast(device, precision):
            logits = model(batch)
        preds[rows] = logits.argmax(-1).cpu()
    model.train(was_training)
    return preds


def evaluate(
    model: PromptedModel,
    split: TokenizedSplit,
    task_metric: str,
    num_classes: int,
    batch_size: int,
    device: torch.device,
    precision: str,
) -> dict[str, Any]:
    preds = predict_split(model, split, batch_size, device, precision)
    return classification_metrics(preds, split.labels, num_classes, task_metric)


def train_batches(rows: Tensor, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Endless seeded shuffles of the training row indices `rows` (N,), in batches."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = rows[torch.randperm(len(rows), generator=generator)]
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield order[start : start + batch_size]
        if len(order) < batch_size:
            yield order


def lr_lambda(steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = int(steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return factor


@dataclass
class TrainResult:
    model: PromptedModel
    metrics: dict[str, Any]  # best dev metrics, test metrics, throughput, trainable params
    history: list[dict[str, Any]]  # one entry per evaluation
    best_state: dict[str, Tensor]
    config: ExperimentConfig  # what was trained (SPT-DARTS: the derived configuration, not the search)


def train(
    cfg: ExperimentConfig,
    ws: Workspace,
    on_eval: Callable[[dict[str, Any], dict[str, Tensor], ExperimentConfig], None] | None = None,
) -> TrainResult:
    """Train `cfg` on the workspace; returns the model holding its best (dev) state.

    `on_eval(record, best_state, trained_cfg)` runs after every evaluation (a study reports and
    checkpoints there). An SPT config with `search: true` first learns its layer gates (SPT-DARTS,
    `darts.py`) and then trains the derived configuration, which `trained_cfg` and the result's
    `config` name. Under an initialised `torch.distributed` group (a multi-worker Ray Train trial) each
    rank trains on its share of every batch and gradients are averaged across ranks (DDP's
    arithmetic; the trainable state is tiny, so one all-reduce per parameter is cheap).
    """
    if getattr(cfg.method, "search", False):
        from .darts import search_then_retrain

        return search_then_retrain(cfg, ws, on_eval)
    tc = cfg.train
    device = resolve_device(tc.device)
    seed_everything(tc.seed)
    model = build_model(cfg, ws).to(device)
    model.train()
    params = list(model.trainable_parameters().values())
    task = ws.data.task
    num_classes = len(task.labels)
    history: list[dict[str, Any]] = []

    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay) if params else None
    scheduler = (
        torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc.steps, tc.warmup_ratio)) if optimizer else None
    )
    batches = train_batches(torch.arange(len(ws.splits["train"])), tc.batch_size, tc.seed)
    rank, world = _world()
    best_score, best_state, best_metrics = -math.inf, _snapshot(model), {}
    train_time, examples, loss_sum, loss_n = 0.0, 0, 0.0, 0
    started = time.perf_counter()

    for step in range(1, tc.steps + 1):
        t0 = time.perf_counter()
        rows = next(batches)
        batch = ws.splits["train"].batch(rows[rank::world] if world > 1 else rows).to(device)
        if model.method is not None:
            model.method.on_step(step)
        with autocast(device, tc.precision):
            logits = model(batch)
        loss = torch.nn.functional.cross_entropy(logits.float(), batch.labels)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                _average_gradients(params, world)
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            optimizer.step()
            scheduler.step()  # type: ignore[union-attr]
        loss_value = loss.item()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time += time.perf_counter() - t0
        if not math.isfinite(loss_value):
            raise TrainingError(f"loss became {loss_value} at step {step}; lower --lr or check the data")
        examples += int(batch.labels.shape[0])
        loss_sum, loss_n = loss_sum + loss_value, loss_n + 1

        if step % tc.eval_interval == 0 or step == tc.steps:
            dev = evaluate(model, ws.splits["dev"], task.metric, num_classes, tc.eval_batch_size, device, tc.precision)
            record = {"step": step, "train_loss": loss_sum / loss_n, **{f"dev_{k}": v for k, v in dev.items()}}
            loss_sum, loss_n = 0.0, 0
            improved = dev["score"] > best_score
            if improved:
                best_score, best_state, best_metrics = float(dev["score"]), _snapshot(model), dict(dev, step=step)
            record["best_dev_score"] = best_score
            history.append(record)
            if on_eval is not None:
                on_eval(dict(record, improved=improved), best_state, cfg)

    model.load_state_dict(best_state, strict=False)
    metrics: dict[str, Any] = {
        "dev": best_metrics,
        "best_step": best_metrics.get("step"),
        "collapsed": bool(best_metrics.get("collapsed")),
        "trainable_params": model.num_trainable(),
        "steps_per_s": tc.steps / train_time,
        "train_examples_per_s": examples / train_time,
        "train_seconds": train_time,
        "wall_seconds": time.perf_counter() - started,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
    }
    if "test" in ws.splits:
        metrics["test"] = evaluate(
            model, ws.splits["test"], task.metric, num_classes, tc.eval_batch_size, device, tc.precision
        )
    return TrainResult(model, metrics, history, best_state, cfg)


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _average_gradients(params: list[Tensor], world: int) -> None:
    import torch.distributed as dist

    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)


def _snapshot(model: PromptedModel) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.trainable_parameters().items()}
