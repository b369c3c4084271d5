"""The training loop of a fused group (`train_group`): K configurations, one forward and backward
per step over one frozen backbone (`training/fused.py`: the fused model and how configurations are
partitioned into groups). Each member is a `trainer.Run` with its place in the group.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from autoprompt_search.backbones import BackboneInfo
from autoprompt_search.config import ExperimentConfig
from autoprompt_search.engine.batch import concat_batches
from autoprompt_search.engine.model import PromptedModel
from autoprompt_search.engine.precision import autocast
from autoprompt_search.errors import ConfigError
from autoprompt_search.training.evaluation import evaluate_members
from autoprompt_search.training.fused import FusedModel, fusable, fusion_key
from autoprompt_search.training.loop import Run, TrainingState, TrainResult, data_parallel
from autoprompt_search.training.recipe import loss_not_finite, mean_across_ranks, ranks, resolve_epochs, seed_everything
from autoprompt_search.training.workspace import (
    Workspace,
    batch_fetcher,
    build_model,
    check_fits,
    prefix_feeder,
    resolve_device,
)

#: on_eval(member index, record, best_state, cfg) -> True to stop that member early (a scheduler's call).
OnMemberEval = Callable[[int, dict[str, Any], dict[str, Tensor], ExperimentConfig], "bool | None"]


class Member(Run):
    """One configuration of a fused group: its Run and its place (`index`) in the fused model."""

    def __init__(self, index: int, cfg: ExperimentConfig, model: PromptedModel, world: tuple[int, int]) -> None:
        super().__init__(cfg, model, world)
        self.index = index

    def runs_at(self, step: int) -> bool:
        return self.status == "RUNNING" and self.steps_done < step <= self.cfg.train.steps


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
    True stops early ("STOPPED"); either leaves the batch and the group goes on; a member that does
    not fit the model fails alone ("ERROR"). A group of one trains as `training.loop.train_experiment` does, without
    a method's stage (SPT-DARTS searches run alone) and with its errors as statuses.
    Under an initialised `torch.distributed` group (a multi-worker Ray Train trial) each rank
    trains on its share of every batch and DDP averages the gradients.
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
    members, unfit = _build_members(cfgs, ws, device, world)
    model: PromptedModel = members[0].model if len(members) == 1 else FusedModel([m.model for m in members])
    model.train()
    step_model = data_parallel(model, device) if world[1] > 1 else model  # training steps only
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
        for m in active:
            m.model.method.on_step(step, m.cfg.train.steps)
        values = _fused_step(step_model, active, parts, len(members) == 1, device, tc0.precision, world)
        train_time += time.perf_counter() - t0
        for m, (_, part), value in zip(active, parts, values, strict=True):
            if not math.isfinite(value):
                m.status = "ERROR"
                m.error = loss_not_finite(value, step)
                continue
            m.count(step, int(part.labels.shape[0]), value)  # type: ignore[union-attr]

        due = [m for m in active if m.status == "RUNNING" and m.evaluates_at(step)]
        if due:
            dev = evaluate_members(model, due, ws.splits["dev"], fetch["dev"], task.metric, num_classes, device)
            for m, metrics in zip(due, dev, strict=True):
                record = m.evaluated(step, metrics)
                stop = on_eval is not None and on_eval(m.index, record, m.best_state, m.cfg)
                if stop and step < m.cfg.train.steps:  # a stop at the last evaluation changes nothing
                    m.status = "STOPPED"

    wall = time.perf_counter() - started
    results = {m.index: m.result(device, train_time, wall, len(members), feeder) for m in members}
    if "test" in ws.splits:
        scored = [m for m in members if m.status != "ERROR" and m.best_metrics]
        tests = evaluate_members(model, scored, ws.splits["test"], fetch["test"], task.metric, num_classes, device)
        for m, metrics in zip(scored, tests, strict=True):
            results[m.index].metrics["test"] = metrics
    for i, error in unfit:
        results[i] = TrainResult(members[0].model, {"dev": {}, "trainable_params": 0}, [], {}, cfgs[i], "ERROR", error)
    return [results[i] for i in range(len(cfgs))]


def _build_members(
    cfgs: list[ExperimentConfig], ws: Workspace, device: torch.device, world: tuple[int, int]
) -> tuple[list[Member], list[tuple[int, str]]]:
    """The group's members on `device`, and (index, reason) for each that does not fit the model
    (a group of one raises instead)."""
    members: list[Member] = []
    unfit: list[tuple[int, str]] = []
    info = BackboneInfo.of(ws.backbone)
    for i, cfg in enumerate(cfgs):
        if len(cfgs) > 1:  # one member that does not fit the model fails alone
            try:
                check_fits(cfg, info)
            except ConfigError as exc:
                unfit.append((i, str(exc)))
                continue
        members.append(Member(i, cfg, build_model(cfg, ws).to(device).train(), world))
    if not members:
        raise ConfigError(unfit[0][1])
    return members, unfit


def _fused_step(
    step_model: Any,
    active: list[Member],
    parts: list[tuple[int, Any]],
    alone: bool,
    device: torch.device,
    precision: str,
    world: tuple[int, int],
) -> list[float]:
    """One forward/backward over the active members' rows; each member with a finite loss steps its
    own optimizer. Returns each member's loss (averaged over ranks)."""
    batch = parts[0][1] if alone else concat_batches(parts)
    with autocast(device, precision):
        logits = step_model(batch)
    losses = []
    lo = 0
    for _, part in parts:
        hi = lo + part.labels.shape[0]
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
        m.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return values
