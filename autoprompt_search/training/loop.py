"""The training loop for one configuration (`train`), top to bottom: seed, build the model, then
per step a batch, the forward, the loss, AdamW, and every `eval_interval` steps an evaluation on
dev that keeps the best trainable state; finally the test split.

AdamW with linear warmup and decay, bf16 autocast on GPU, seeded everything, throughput, NaN and
collapse detection. `Run` holds one configuration's training (optimiser, data order, best state)
and is what a checkpoint saves; a fused group (`training/fused_loop.py`) trains several Runs at once.
The workspace (model + data) is `training/workspace.py`, evaluation `training/evaluation.py`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from autoprompt_search.backbones import BackboneInfo
from autoprompt_search.config import ExperimentConfig
from autoprompt_search.engine.model import PromptedModel
from autoprompt_search.engine.precision import autocast
from autoprompt_search.engine.prefix_cache import PrefixFeeder
from autoprompt_search.errors import ConfigError, TrainingError
from autoprompt_search.training.evaluation import evaluate
from autoprompt_search.training.fused import FusedModel
from autoprompt_search.training.metrics import COLLAPSED
from autoprompt_search.training.recipe import (
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
from autoprompt_search.training.stages import before_training
from autoprompt_search.training.workspace import (
    Workspace,
    batch_fetcher,
    build_model,
    check_fits,
    prefix_feeder,
    resolve_device,
)


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
    """A run's training right after an evaluation: enough to continue it after a crash.

    `tensors`: current trainable parameters (`param.*`), the best state (`best.*`) and AdamW's
    state (`optim.<index>.<key>`); `meta`: JSON-able step, history, best score and metrics,
    optimizer hyper-parameters and the schedule's position. The data order is re-derived from
    the seed; dropout's random stream is not restored, so a resumed run matches an uninterrupted
    one exactly only without dropout. `meta["stage_metrics"]`: what the method's stage reported
    before training (SPT-DARTS' gate search), so a resumed run reports it without running it again.
    """

    tensors: dict[str, Tensor]
    meta: dict[str, Any]


#: on_eval(record, best_state, trained_cfg) -> True to stop this trial early (a scheduler's call).
#: `record["training_state"]()` returns the run's TrainingState (for a resumable checkpoint).
OnEval = Callable[[dict[str, Any], dict[str, Tensor], ExperimentConfig], "bool | None"]
#: on_step(step, steps, loss): after every training step (a progress bar).
OnStep = Callable[[int, int, float], None]


def train_experiment(
    cfg: ExperimentConfig,
    ws: Workspace,
    on_eval: OnEval | None = None,
    resume: TrainingState | None = None,
    on_step: OnStep | None = None,
) -> TrainResult:
    """Train `cfg` on the workspace; returns the model holding its best (dev) state.

    `on_eval(record, best_state, trained_cfg)` runs after every evaluation (a study reports and
    checkpoints there; returning True stops the run); `on_step(step, steps, loss)` after every
    training step. A method's stage runs first (`training/stages.py`:
    an SPT config with `search: true` learns its layer gates, `methods/spt_search.py`, and the derived
    configuration is trained: `trained_cfg` and the result's `config` name it). Raises
    `TrainingError` on a NaN loss. A run whose every evaluation collapsed (one class) ends with
    status "COLLAPSED"; an evaluation that collapsed never becomes the best. `resume` continues a
    run from the TrainingState of one of its evaluations (its configuration is the one trained:
    a resumed SPT-DARTS run does not search again). Under an initialised `torch.distributed`
    group (a multi-worker Ray Train trial) each rank trains on its share of every batch, and DDP
    averages the gradients.
    """
    check_fits(cfg, BackboneInfo.of(ws.backbone))  # before a stage: SPT-DARTS' derived layers are among its candidates
    cfg, stage_metrics = before_training(cfg, ws)
    n_train = len(ws.splits["train"])
    resolve_epochs(cfg, n_train)
    tc = cfg.train
    device = resolve_device(tc.device)
    seed_everything(tc.seed)
    world = ranks()
    model = build_model(cfg, ws).to(device).train()
    run = Run(cfg, model, world)
    run.stage_metrics = stage_metrics
    step_model = data_parallel(model, device) if world[1] > 1 else model  # training steps only
    task = ws.data.task
    feeder = prefix_feeder(cfg, ws, model, device)
    fetch = {name: batch_fetcher(feeder, ws, name, device) for name in ws.splits}
    if resume is not None:
        run.restore(resume, n_train)
    train_time = 0.0
    started = time.perf_counter()

    for step in range(run.steps_done + 1, tc.steps + 1):
        t0 = time.perf_counter()
        batch = fetch["train"](run.next_rows(n_train))
        model.method.on_step(step, tc.steps)
        with autocast(device, tc.precision):
            logits = step_model(batch)
        loss = torch.nn.functional.cross_entropy(logits.float(), batch.labels)
        value = loss.item()  # the step's one host sync
        if world[1] > 1:  # the loss over the whole batch; not finite on one rank = not finite on every rank
            (value,) = mean_across_ranks([value])
        if not math.isfinite(value):
            raise TrainingError(loss_not_finite(value, step))
        run.update(loss)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time += time.perf_counter() - t0
        run.count(step, int(batch.labels.shape[0]), value)  # type: ignore[union-attr]
        if on_step is not None:
            on_step(step, tc.steps, value)

        if run.evaluates_at(step):
            dev = evaluate(
                model, ws.splits["dev"], task.metric, len(task.labels), tc.eval_batch_size, device, tc.precision,
                fetch["dev"],
            )  # fmt: skip
            record = run.evaluated(step, dev)
            if on_eval is not None and on_eval(record, run.best_state, cfg) and step < tc.steps:
                run.status = "STOPPED"  # a stop at the last evaluation changes nothing
                break

    result = run.result(device, train_time, time.perf_counter() - started, 1, feeder)
    if "test" in ws.splits and run.best_metrics:
        result.metrics["test"] = evaluate(
            model, ws.splits["test"], task.metric, len(task.labels), tc.eval_batch_size, device, tc.precision,
            fetch["test"],
        )  # fmt: skip
    return result


class Run:
    """One configuration's training: its model, AdamW and schedule, data order, loss since the last
    evaluation, evaluations and best state; `training_state`/`restore` save and continue it."""

    def __init__(self, cfg: ExperimentConfig, model: PromptedModel, world: tuple[int, int]) -> None:
        tc = cfg.train
        self.cfg, self.model, self.world = cfg, model, world
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
        self.best_score, self.best_state, self.best_metrics = -math.inf, snapshot(model), {}
        self.examples, self.loss_sum, self.loss_n, self.steps_done = 0, 0.0, 0, 0
        self.stage_metrics: dict[str, Any] = {}  # what a method's stage reported (SPT-DARTS' gate search)

    def next_rows(self, n_train: int) -> Tensor:
        """This rank's share of the next batch of training rows, in the run's seeded order."""
        if self.batches is None:
            self.batches = train_batches(torch.arange(n_train), self.cfg.train.batch_size, self.cfg.train.seed)
        return rank_share(next(self.batches), self.world)

    def update(self, loss: Tensor) -> None:
        """One AdamW step on `loss` (clipped, scheduled); nothing to do for a run with no parameters."""
        if self.optimizer is None:
            return
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.step()

    def step(self) -> None:
        """The optimiser and schedule step after the gradients are in (a fused group backpropagates once)."""
        if self.cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.train.grad_clip)
        self.optimizer.step()  # type: ignore[union-attr]
        self.scheduler.step()  # type: ignore[union-attr]

    def count(self, step: int, examples: int, loss: float) -> None:
        """Book a finished training step: its examples and loss."""
        self.steps_done = step
        self.examples += examples
        self.loss_sum, self.loss_n = self.loss_sum + loss, self.loss_n + 1

    def evaluates_at(self, step: int) -> bool:
        tc = self.cfg.train
        return step % tc.eval_interval == 0 or step == tc.steps

    def evaluated(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """Record an evaluation on dev: the history entry (`eval_*` of this evaluation, `best_score`
        so far), with `improved` and `training_state` for the caller's `on_eval`."""
        record = {
            "step": step,
            "train_loss": self.loss_sum / self.loss_n,
            **{f"eval_{k}": v for k, v in metrics.items()},
        }
        self.loss_sum, self.loss_n = 0.0, 0
        # A one-class prediction never becomes the best: on an imbalanced task scored by F1 a
        # constant "positive" scores high and would win selection.
        improved = not metrics["collapsed"] and metrics["score"] > self.best_score
        if improved:
            self.best_score, self.best_state = float(metrics["score"]), snapshot(self.model)
            self.best_metrics = dict(metrics, step=step)
        record["best_score"] = self.best_score  # best so far (-inf: only collapsed evaluations)
        self.history.append(record)
        return dict(
            record, improved=improved, best_step=self.best_metrics.get("step"), training_state=self.training_state
        )

    def result(
        self, device: torch.device, train_time: float, wall: float, group: int, feeder: PrefixFeeder | None
    ) -> TrainResult:
        """The run's end: its model back at its best state, status and metrics. A run whose every
        evaluation collapsed keeps its last state and metrics, for the record, as COLLAPSED."""
        if self.status != "ERROR" and not self.best_metrics and self.history:
            last = self.history[-1]
            self.best_state = snapshot(self.model)
            self.best_metrics = {k[5:]: v for k, v in last.items() if k.startswith("eval_")} | {"step": last["step"]}
            self.status, self.error = "COLLAPSED", COLLAPSED
        self.model.load_state_dict(self.best_state, strict=False)
        if self.status == "RUNNING":
            self.status = "TERMINATED"
        steps = max(self.steps_done, 1)
        metrics: dict[str, Any] = {
            "dev": self.best_metrics,
            "best_step": self.best_metrics.get("step"),
            "collapsed": bool(self.best_metrics.get("collapsed")),
            "trainable_params": self.model.num_trainable(),
            "steps_per_s": steps / train_time if train_time else 0.0,
            "train_examples_per_s": self.examples / train_time if train_time else 0.0,
            "train_seconds": train_time,
            "wall_seconds": wall,
            "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
            "prefix_cache": None
            if feeder is None
            else {"layer": feeder.layer, "hits": feeder.hits, "misses": feeder.misses},
            "group_size": group,
            **self.stage_metrics,
        }
        return TrainResult(self.model, metrics, self.history, self.best_state, self.cfg, self.status, self.error)

    def training_state(self) -> TrainingState:
        tensors = {f"param.{k}": v.detach().to("cpu", copy=True) for k, v in self.model.trainable_parameters().items()}
        tensors |= {f"best.{k}": v for k, v in self.best_state.items()}
        meta: dict[str, Any] = {
            "step": self.steps_done,
            "history": self.history,
            "best_score": self.best_score,
            "best_metrics": self.best_metrics,
            "examples": self.examples,
            "stage_metrics": self.stage_metrics,  # a resumed run reports its stage, which does not run again
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
        self.stage_metrics = dict(meta.get("stage_metrics") or self.stage_metrics)
        for _ in range(self.steps_done):  # the data order continues where it stopped
            self.next_rows(n_train)


def data_parallel(model: PromptedModel | FusedModel, device: torch.device) -> torch.nn.Module:
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


def snapshot(model: PromptedModel) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.trainable_parameters().items()}
