"""The training loop: one configuration (`train`) or a fused group of them (`train_group`).

AdamW with linear warmup and decay, bf16 autocast on GPU, seeded everything, evaluation every
N steps keeping the best trainable state, throughput, NaN and collapse detection. The workspace
(model + data) is `workspace.py`, evaluation `evaluation.py`, fused partitioning `fused.py`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import darts  # noqa: F401  (registers SPT-DARTS' gate search as the `spt` stage)
from .backbones import BackboneInfo
from .batch import concat_batches
from .config import ExperimentConfig
from .engine import PromptedModel
from .errors import ConfigError, TrainingError
from .evaluation import evaluate_members
from .fused import FusedModel, fusable, fusion_key
from .metrics import COLLAPSED
from .precision import autocast
from .prefix_cache import PrefixFeeder
from .recipe import (
    loss_not_finite,
    lr_lambda,
    mean_across_ranks,
    param_groups,
    rank_share,
    ranks,
    resolve_epochs,
    seed_everything,
    train_batches,
)
from .stages import before_training
from .workspace import Workspace, batch_fetcher, build_model, check_fits, prefix_feeder, resolve_device


@dataclass
class TrainResult:
    model: PromptedModel
    metrics: dict[str, Any]  # best dev metrics, test metrics, throughput, trainable params
    history: list[dict[str, Any]]  # one entry per evaluation
    best_state: dict[str, Tensor]
    config: ExperimentConfig  # what was trained (SPT-DARTS: the derived configuration, not the search)
    status: str = "TERMINATED"  # all steps | STOPPED (early, by on_eval) | ERROR (error says why) | COLLAPSED
    error: str | None = None


@dataclass
class TrainingState:
    """A member's training right after an evaluation: enough to continue it after a crash.

    `tensors`: current trainable parameters (`param.*`), the best state (`best.*`) and AdamW's
    state (`optim.<index>.<key>`); `meta`: JSON-able step, history, best score and metrics,
    optimizer hyper-parameters and the schedule's position. The data order is re-derived from
    the seed; dropout's random stream is not restored, so a resumed run matches an uninterrupted
    one exactly only without dropout.
    """

    tensors: dict[str, Tensor]
    meta: dict[str, Any]


#: on_eval(record, best_state, trained_cfg) -> True to stop this trial early (a scheduler's call).
#: `record["training_state"]()` returns the run's TrainingState (for a resumable checkpoint).
OnEval = Callable[[dict[str, Any], dict[str, Tensor], ExperimentConfig], "bool | None"]
#: the same for a fused group, with the member's index first
OnMemberEval = Callable[[int, dict[str, Any], dict[str, Tensor], ExperimentConfig], "bool | None"]


def train(
    cfg: ExperimentConfig, ws: Workspace, on_eval: OnEval | None = None, resume: TrainingState | None = None
) -> TrainResult:
    """Train `cfg` on the workspace; returns the model holding its best (dev) state.

    `on_eval(record, best_state, trained_cfg)` runs after every evaluation (a study reports and
    checkpoints there; returning True stops the run). An SPT config with `search: true` first
    learns its layer gates (SPT-DARTS, `darts.py`) and then trains the derived configuration,
    which `trained_cfg` and the result's `config` name. Raises `TrainingError` on a NaN loss.
    A run whose every evaluation collapsed (one class) ends with status "COLLAPSED"; an evaluation
    that collapsed never becomes the best.
    `resume` continues a run from the TrainingState of one of its evaluations.
    """
    # A method's own first stage (SPT-DARTS: the gate search) decides what is trained. A resumed
    # run's configuration is the one its checkpoint trained (already derived): nothing to redo.
    cfg, stage_metrics = before_training(cfg, ws)
    member_eval = None if on_eval is None else (lambda _i, record, state, c: on_eval(record, state, c))
    result = train_group([cfg], ws, member_eval, None if resume is None else {0: resume})[0]
    if result.status == "ERROR":
        raise TrainingError(result.error)
    result.metrics.update(stage_metrics)
    return result


class _Member:
    """One configuration of a fused group: its model, optimiser, data order and bookkeeping."""

    def __init__(self, index: int, cfg: ExperimentConfig, model: PromptedModel, world: tuple[int, int]) -> None:
        tc = cfg.train
        self.index, self.cfg, self.model, self.world = index, cfg, model, world
        named = model.trainable_parameters()
        self.params = list(named.values())
        self.optimizer = (
            torch.optim.AdamW(param_groups(named, tc.weight_decay), lr=tc.lr, weight_decay=tc.weight_decay)
            if self.params
            else None
        )
        self.scheduler = (
            torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(tc.steps, tc.warmup_ratio))
            if self.optimizer
            else None
        )
        self.batches: Iterator[Tensor] | None = None
        self.status, self.error = "RUNNING", None
        self.history: list[dict[str, Any]] = []
        self.best_score, self.best_state, self.best_metrics = -math.inf, _snapshot(model), {}
        self.examples, self.loss_sum, self.loss_n, self.steps_done = 0, 0.0, 0, 0

    def training_state(self) -> TrainingState:
        tensors = {f"param.{k}": v.detach().to("cpu", copy=True) for k, v in self.model.trainable_parameters().items()}
        tensors |= {f"best.{k}": v for k, v in self.best_state.items()}
        meta: dict[str, Any] = {
            "step": self.steps_done,
            "history": self.history,
            "best_score": self.best_score,
            "best_metrics": self.best_metrics,
            "examples": self.examples,
        }
        if self.optimizer is not None and self.scheduler is not None:
            optim = self.optimizer.state_dict()
            for index, state in optim["state"].items():
                tensors |= {f"optim.{index}.{key}": value.detach().cpu() for key, value in state.items()}
            meta["param_groups"] = optim["param_groups"]
            meta["scheduler"] = self.scheduler.state_dict()  # our schedule is a plain function: lr_lambdas [None]
        return TrainingState(tensors, meta)

    def restore(self, state: TrainingState, n_train: int) -> None:
        params = self.model.trainable_parameters()
        if {k for k in state.tensors if k.startswith("param.")} != {f"param.{k}" for k in params}:
            raise ConfigError("resume: the checkpoint's parameters do not match this configuration")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state.tensors[f"param.{name}"])
        self.best_state = {name: state.tensors[f"best.{name}"] for name in params}
        meta = state.meta
        if self.optimizer is not None and self.scheduler is not None:
            optim: dict[int, dict[str, Tensor]] = {}
            for key, value in state.tensors.items():
                if key.startswith("optim."):
                    _, index, field_name = key.split(".", 2)
                    optim.setdefault(int(index), {})[field_name] = value
            self.optimizer.load_state_dict({"state": optim, "param_groups": meta["param_groups"]})
            self.scheduler.load_state_dict(dict(meta["scheduler"]))
        self.history, self.best_metrics = list(meta["history"]), dict(meta["best_metrics"])
        self.best_score, self.examples = float(meta["best_score"]), int(meta["examples"])
        self.steps_done = int(meta["step"])
        for _ in range(self.steps_done):  # the data order continues where it stopped
            self.next_rows(n_train)

    def next_rows(self, n_train: int) -> Tensor:
        if self.batches is None:
            self.batches = train_batches(torch.arange(n_train), self.cfg.train.batch_size, self.cfg.train.seed)
        rows = next(self.batches)
        return rank_share(rows, self.world)

    def runs_at(self, step: int) -> bool:
        return self.status == "RUNNING" and self.steps_done < step <= self.cfg.train.steps

    def evaluates_at(self, step: int) -> bool:
        tc = self.cfg.train
        return step % tc.eval_interval == 0 or step == tc.steps


def train_group(
    cfgs: list[ExperimentConfig],
    ws: Workspace,
    on_eval: OnMemberEval | None = None,
    resume: dict[int, TrainingState] | None = None,
) -> list[TrainResult]:
    """Train K configurations together, one fused forward/backward per step over one backbone.

    Each member keeps its own parameters, AdamW state, learning-rate schedule, gradient clipping,
    data order (its seed), number of steps, evaluations and best checkpoint; the loss is the sum
    of the members' mean losses, so its gradients are the ones it would get alone. A member whose
    loss is not finite fails alone (status "ERROR" with the reason), one whose `on_eval` returns
    True stops early ("STOPPED"); either leaves the batch and the group goes on. With K = 1 this is
    ordinary single-trial training. Under an initialised `torch.distributed` group (a multi-worker
    Ray Train trial) each rank trains on its share of every batch and gradients are averaged.
    `resume` maps member indices to the TrainingState they continue from.
    """
    n_train = len(ws.splits["train"])
    for cfg in cfgs:
        resolve_epochs(cfg, n_train)
    keys = {fusion_key(c) for c in cfgs}
    if len(keys) > 1 or not all(fusable(c) for c in cfgs):
        raise ConfigError("fused group: members differ in head, batch size, device or precision; partition them first")
    tc0 = cfgs[0].train
    device = resolve_device(tc0.device)
    seed_everything(tc0.seed)
    world = ranks()
    members, unfit = [], []
    info = BackboneInfo.of(ws.backbone)
    for i, cfg in enumerate(cfgs):
        if len(cfgs) > 1:  # one member that does not fit the model fails alone
            try:
                check_fits(cfg, info)
            except ConfigError as exc:
                unfit.append((i, str(exc)))
                continue
        members.append(_Member(i, cfg, build_model(cfg, ws).to(device).train(), world))
    if not members:
        raise ConfigError(unfit[0][1])
    model: PromptedModel = members[0].model if len(members) == 1 else FusedModel([m.model for m in members])
    model.train()
    step_model = _data_parallel(model, device) if world[1] > 1 else model  # training steps only
    task = ws.data.task
    num_classes = len(task.labels)
    feeder = prefix_feeder(cfgs[0], ws, model, device)
    fetch = {name: batch_fetcher(feeder, ws, name, device) for name in ws.splits}
    for m in members:
        if resume and m.index in resume:
            m.restore(resume[m.index], n_train)
    train_time = 0.0
    started = time.perf_counter()
    max_steps = max(c.train.steps for c in cfgs)

    for step in range(min(m.steps_done for m in members) + 1, max_steps + 1):
        active = [m for m in members if m.runs_at(step)]
        if not active:
            break
        t0 = time.perf_counter()
        parts = [(m.index, fetch["train"](m.next_rows(n_train))) for m in active]
        batch = parts[0][1] if len(members) == 1 else concat_batches(parts)
        for m in active:
            m.model.method.on_step(step, m.cfg.train.steps)
        with autocast(device, tc0.precision):
            logits = step_model(batch)
        losses = []
        lo = 0
        for _, part in parts:
            hi = lo + part.labels.shape[0]  # type: ignore[union-attr]
            losses.append(torch.nn.functional.cross_entropy(logits[lo:hi].float(), part.labels))
            lo = hi
        values = torch.stack([loss.detach() for loss in losses]).cpu().tolist()  # the step's one host sync
        if world[1] > 1:  # the loss over the whole batch; not finite on one rank = not finite on every rank
            values = mean_across_ranks(values)
        finite = [(m, loss) for m, loss, v in zip(active, losses, values, strict=True) if math.isfinite(v)]
        trainable = [m for m, _ in finite if m.optimizer is not None]
        for m in trainable:
            m.optimizer.zero_grad(set_to_none=True)  # type: ignore[union-attr]
        if trainable:
            torch.stack([loss for m, loss in finite if m.optimizer is not None]).sum().backward()
        for m in trainable:
            if m.cfg.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(m.params, m.cfg.train.grad_clip)
            m.optimizer.step()  # type: ignore[union-attr]
            m.scheduler.step()  # type: ignore[union-attr]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time += time.perf_counter() - t0
        for m, (_, part), value in zip(active, parts, values, strict=True):
            if not math.isfinite(value):
                m.status = "ERROR"
                m.error = loss_not_finite(value, step)
                continue
            m.steps_done = step
            m.examples += int(part.labels.shape[0])  # type: ignore[union-attr]
            m.loss_sum, m.loss_n = m.loss_sum + value, m.loss_n + 1

        due = [m for m in active if m.status == "RUNNING" and m.evaluates_at(step)]
        if due:
            dev = evaluate_members(model, due, ws.splits["dev"], fetch["dev"], task.metric, num_classes, device)
            for m, metrics in zip(due, dev, strict=True):
                record = {
                    "step": step,
                    "train_loss": m.loss_sum / m.loss_n,
                    **{f"eval_{k}": v for k, v in metrics.items()},  # this evaluation (dev split)
                }
                m.loss_sum, m.loss_n = 0.0, 0
                # A one-class prediction never becomes the best: on an imbalanced task scored by F1 a
                # constant "positive" scores high and would win selection.
                improved = not metrics["collapsed"] and metrics["score"] > m.best_score
                if improved:
                    m.best_score, m.best_state = float(metrics["score"]), _snapshot(m.model)
                    m.best_metrics = dict(metrics, step=step)
                record["best_score"] = m.best_score  # best so far (-inf: only collapsed evaluations)
                m.history.append(record)
                given = dict(record, improved=improved, training_state=m.training_state)
                stop = on_eval is not None and on_eval(m.index, given, m.best_state, m.cfg)
                if stop and step < m.cfg.train.steps:  # a stop at the last evaluation changes nothing
                    m.status = "STOPPED"

    wall = time.perf_counter() - started
    results: dict[int, TrainResult] = {}
    for m in members:
        if m.status != "ERROR" and not m.best_metrics and m.history:
            # Only collapsed evaluations: keep the last one's state and metrics, for the record.
            last = m.history[-1]
            m.best_state = _snapshot(m.model)
            m.best_metrics = {k[5:]: v for k, v in last.items() if k.startswith("eval_")} | {"step": last["step"]}
            m.status, m.error = "COLLAPSED", COLLAPSED
        m.model.load_state_dict(m.best_state, strict=False)
        if m.status == "RUNNING":
            m.status = "TERMINATED"
        results[m.index] = _member_result(m, device, train_time, wall, len(members), feeder)
    if "test" in ws.splits:
        scored = [m for m in members if m.status != "ERROR" and m.best_metrics]
        tests = evaluate_members(model, scored, ws.splits["test"], fetch["test"], task.metric, num_classes, device)
        for m, metrics in zip(scored, tests, strict=True):
            results[m.index].metrics["test"] = metrics
    for i, error in unfit:
        results[i] = TrainResult(members[0].model, {"dev": {}, "trainable_params": 0}, [], {}, cfgs[i], "ERROR", error)
    return [results[i] for i in range(len(cfgs))]


def _member_result(
    m: _Member, device: torch.device, train_time: float, wall: float, group: int, feeder: PrefixFeeder | None
) -> TrainResult:
    steps = max(m.steps_done, 1)
    metrics: dict[str, Any] = {
        "dev": m.best_metrics,
        "best_step": m.best_metrics.get("step"),
        "collapsed": bool(m.best_metrics.get("collapsed")),
        "trainable_params": m.model.num_trainable(),
        "steps_per_s": steps / train_time if train_time else 0.0,
        "train_examples_per_s": m.examples / train_time if train_time else 0.0,
        "train_seconds": train_time,
        "wall_seconds": wall,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "prefix_cache": None
        if feeder is None
        else {"layer": feeder.layer, "hits": feeder.hits, "misses": feeder.misses},
        "group_size": group,
    }
    return TrainResult(m.model, metrics, m.history, m.best_state, m.cfg, m.status, m.error)


def _data_parallel(model: PromptedModel | FusedModel, device: torch.device) -> torch.nn.Module:
    """The model under DDP: each rank's backward averages the gradients over the ranks.

    find_unused_parameters: a fused group's members leave it mid-run (stopped, failed) and their
    parameters then get no gradient. Measured on CPU against one flat all-reduce after backward
    (benchmarks/ddp_sync.py, results/benchmarks/ddp_sync_cpu.md: 2 gloo ranks, a fused group of 4):
    as fast (1.00x), identical parameters. The frozen backbone is left out of DDP's start-up
    broadcast: every rank loads the same weights, and on a 7B model that broadcast is 14 GB."""
    from torch.nn.parallel import DistributedDataParallel

    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    frozen += [name for name, _ in model.named_buffers()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)
    ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True, broadcast_buffers=False)


def _snapshot(model: PromptedModel) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.trainable_parameters().items()}
