"""SPT-DARTS: learn SPT's layer gates bi-level, derive a layer set, retrain it.

The training set is split once (seeded) into a weight part and an architecture part. Each step
alternates, as in DARTS (Liu et al. 2019):

1. architecture step on an architecture batch: only the gate logits get a gradient (first
   order: d L_arch / d alpha at the current weights; second order: at the weights after one
   virtual weight step, with the Hessian-vector term by finite differences), plus the budget
   penalty `budget_weight * relu(E[#prompted layers] - budget)^2`, Adam at `arch_lr`;
2. weight step on a weight batch: only the generators, the free initial prompt and the head
   get a gradient, AdamW at `train.lr` with the usual warmup/decay.

Gradients are taken with `torch.autograd.grad` on exactly one group, so a step can never leak
into the other group's `.grad`. Under several Train ranks each rank takes its share of every
batch and the gradients are averaged over the ranks (what DDP does for `.backward`; DDP's hooks
fire on `.backward` only, not on `torch.autograd.grad`, hence the explicit all-reduce), so the
ranks split the search's work and keep identical gates. Every evaluation logs the gate probabilities
per layer. After the search, `derived_config()` picks the layers and `train()` retrains a fresh
model on them (`training/stages.py`: the training loop runs this search first, as the `spt` method's stage).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from autoprompt_search.config import ExperimentConfig, evaluation_interval
from autoprompt_search.engine.model import Batch, PromptedModel
from autoprompt_search.engine.precision import autocast
from autoprompt_search.errors import ConfigError, TrainingError
from autoprompt_search.methods import SelectivePrompt, SptConfig, method_to_dict
from autoprompt_search.training.evaluation import evaluate
from autoprompt_search.training.recipe import (
    average_gradients,
    loss_not_finite,
    lr_lambda,
    mean_across_ranks,
    param_groups,
    rank_share,
    ranks,
    seed_everything,
    train_batches,
)
from autoprompt_search.training.workspace import Workspace, batch_fetcher, build_model, prefix_feeder, resolve_device


@dataclass
class GateSearch:
    """What the gate search found."""

    layers: tuple[int, ...]  # the candidate blocks
    probabilities: list[float]  # final P(gate open) per candidate
    derived: Any  # the method config to retrain (SptConfig(search=False) or DeepConfig)
    history: list[dict[str, Any]]  # per evaluation: step, losses, dev score, gate probabilities
    steps: int
    seconds: float
    prefix_cache: dict[str, int] | None  # layer, hits, misses (None: no cache)


def split_rows(n: int, arch_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded disjoint (weight rows, architecture rows) of a training set of n rows."""
    if n < 2:
        raise ConfigError("data: SPT-DARTS needs at least 2 training examples to split for the gate steps")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    n_arch = min(n - 1, max(1, round(n * arch_fraction)))
    return order[n_arch:], order[:n_arch]


class BilevelSearch:
    """One SPT model and its two optimisers; `step()` runs one architecture + one weight step."""

    def __init__(self, cfg: ExperimentConfig, ws: Workspace) -> None:
        if not isinstance(cfg.method, SptConfig) or not cfg.method.search:
            raise ConfigError("method: the gate search needs method spt with search: true")
        self.cfg, self.ws = cfg, ws
        self.device = resolve_device(cfg.train.device)
        self.world = ranks()
        seed_everything(cfg.train.seed)
        self.model: PromptedModel = build_model(cfg, ws).to(self.device)
        self.model.train()
        method = self.model.method
        assert isinstance(method, SelectivePrompt)
        self.method = method
        self.gates = method.gate_parameters()
        gate_ids = {id(p) for p in self.gates}
        named = {k: p for k, p in self.model.trainable_parameters().items() if id(p) not in gate_ids}
        self.weights = list(named.values())
        tc, sc = cfg.train, cfg.method
        self.steps = sc.search_steps or tc.steps
        # The loop's AdamW groups: no weight decay on biases and norms (recipe.param_groups).
        self.weight_opt = torch.optim.AdamW(
            param_groups(named, tc.weight_decay), lr=tc.lr, weight_decay=tc.weight_decay
        )
        self.weight_sched = torch.optim.lr_scheduler.LambdaLR(self.weight_opt, lr_lambda(self.steps, tc.warmup_ratio))
        # DARTS' architecture optimiser: Adam, beta1 0.5, small weight decay on the logits.
        self.gate_opt = torch.optim.Adam(self.gates, lr=sc.arch_lr, betas=(0.5, 0.999), weight_decay=1e-3)
        weight_rows, arch_rows = split_rows(len(ws.splits["train"]), sc.arch_fraction, tc.seed)
        self.weight_batches = train_batches(weight_rows, tc.batch_size, tc.seed)
        self.arch_batches = train_batches(arch_rows, tc.batch_size, tc.seed + 1)
        # Blocks below the lowest candidate never see a prompt: their output comes from the
        # frozen-prefix cache, as in the training loop (and is shared with the retrain).
        self.feeder = prefix_feeder(cfg, ws, self.model, self.device)
        self.fetch = {name: batch_fetcher(self.feeder, ws, name, self.device) for name in ("train", "dev")}

    def batch(self, rows: Tensor) -> Batch:
        return self.fetch["train"](rank_share(rows, self.world))

    def loss(self, batch: Batch) -> Tensor:
        with autocast(self.device, self.cfg.train.precision):
            logits = self.model(batch)
        return torch.nn.functional.cross_entropy(logits.float(), batch.labels)

    def penalty(self) -> Tensor:
        sc = self.cfg.method
        if not sc.budget:
            return torch.zeros((), device=self.device)
        return sc.budget_weight * torch.relu(self.method.expected_layers() - sc.budget) ** 2

    def arch_step(self, arch: Batch, train: Batch | None = None) -> float:
        """Update the gate logits only; `train` is the weight batch the second-order term needs."""
        if self.cfg.method.second_order:
            assert train is not None, "second-order gate steps need a weight batch"
            grads, loss = self._second_order_gate_grads(arch, train)
        else:
            loss = self.loss(arch)
            grads = average_gradients(torch.autograd.grad(loss + self.penalty(), self.gates), self.world)
        for p, g in zip(self.gates, grads, strict=True):
            p.grad = g
        self.gate_opt.step()
        self.gate_opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def weight_step(self, train: Batch) -> float:
        """Update everything but the gate logits."""
        loss = self.loss(train)
        grads = average_gradients(torch.autograd.grad(loss, self.weights, allow_unused=True), self.world)
        for p, g in zip(self.weights, grads, strict=True):
            p.grad = g
        if self.cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.weights, self.cfg.train.grad_clip)
        self.weight_opt.step()
        self.weight_sched.step()
        self.weight_opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def _second_order_gate_grads(self, arch: Batch, train: Batch) -> tuple[tuple[Tensor, ...], Tensor]:
        """DARTS eq. 7-8: grad_a L_arch(w', a) - xi * (grad_a L_train(w+, a) - grad_a L_train(w-, a)) / 2eps."""
        xi = self.weight_opt.param_groups[0]["lr"]
        saved = [p.detach().clone() for p in self.weights]
        seed = int(torch.randint(0, 2**31 - 1, ()))
        with torch.no_grad():  # w' = w - xi * grad_w L_train(w, a): one virtual weight step
            grads = self._seeded_grads(seed, train, self.weights)
            for p, g in zip(self.weights, grads, strict=True):
                if g is not None:
                    p.sub_(xi * g)
        loss = self.loss(arch)
        both = torch.autograd.grad(loss + self.penalty(), [*self.gates, *self.weights], allow_unused=True)
        both = average_gradients(both, self.world)
        gate_grads, dw = both[: len(self.gates)], both[len(self.gates) :]
        norm = torch.sqrt(sum((g.float() ** 2).sum() for g in dw if g is not None))
        eps = 0.01 / (float(norm) + 1e-12)
        hessian = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, w, g in zip(self.weights, saved, dw, strict=True):
                    p.copy_(w if g is None else w + sign * eps * g)
            hessian.append(self._seeded_grads(seed, train, self.gates))
        with torch.no_grad():
            for p, w in zip(self.weights, saved, strict=True):
                p.copy_(w)
        out = tuple(
            ga - xi * (gp - gm) / (2 * eps) for ga, gp, gm in zip(gate_grads, hessian[0], hessian[1], strict=True)
        )
        return out, loss.detach()

    def _seeded_grads(self, seed: int, batch: Batch, wrt: list[Tensor]) -> tuple[Any, ...]:
        """Gradients of the training loss with the same dropout and gate noise each time."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            with torch.enable_grad():
                return average_gradients(torch.autograd.grad(self.loss(batch), wrt, allow_unused=True), self.world)

    def run(self, on_eval: Callable[[dict[str, Any]], None] | None = None) -> GateSearch:
        tc = self.cfg.train
        task = self.ws.data.task
        interval = evaluation_interval(tc.eval_every, self.steps)  # the search's own step count
        history: list[dict[str, Any]] = []
        started = time.perf_counter()
        sums = {"arch": 0.0, "train": 0.0, "n": 0}
        for step in range(1, self.steps + 1):
            self.method.on_step(step, self.steps)
            train = self.batch(next(self.weight_batches))
            arch = self.batch(next(self.arch_batches))
            arch_loss = self.arch_step(arch, train)
            train_loss = self.weight_step(train)
            if self.world[1] > 1:  # the whole batch's losses: not finite on one rank = on every rank
                arch_loss, train_loss = mean_across_ranks([arch_loss, train_loss])
            for loss in (arch_loss, train_loss):
                if not math.isfinite(loss):
                    raise TrainingError(loss_not_finite(loss, step, "gate search ", "lower --lr or method.arch_lr"))
            sums["arch"] += arch_loss
            sums["train"] += train_loss
            sums["n"] += 1
            if step % interval == 0 or step == self.steps:
                dev = evaluate(
                    self.model, self.ws.splits["dev"], task.metric, len(task.labels), tc.eval_batch_size,
                    self.device, tc.precision, self.fetch["dev"],
                )  # fmt: skip
                probs = self.method.gate_probabilities()
                record = {
                    "step": step,
                    "train_loss": sums["train"] / sums["n"],
                    "arch_loss": sums["arch"] / sums["n"],
                    "eval_score": float(dev["score"]),
                    "gate_probs": [round(float(p), 5) for p in probs],
                    "expected_layers": float(probs.sum()),
                }
                sums = {"arch": 0.0, "train": 0.0, "n": 0}
                history.append(record)
                if on_eval is not None:
                    on_eval(record)
        return GateSearch(
            layers=self.method.layers,
            probabilities=[float(p) for p in self.method.gate_probabilities()],
            derived=self.method.derived_config(),
            history=history,
            steps=self.steps,
            seconds=time.perf_counter() - started,
            prefix_cache=None
            if self.feeder is None
            else {"layer": self.feeder.layer, "hits": self.feeder.hits, "misses": self.feeder.misses},
        )


def gate_search(cfg: ExperimentConfig, ws: Workspace) -> tuple[ExperimentConfig, dict[str, Any]]:
    """SPT-DARTS' first stage: learn the gates, derive a layer set; returns the configuration to
    retrain from scratch and the search's metrics (the training loop adds them to its result).
    An SPT config without `search` (a fixed or already derived layer set) trains as it is."""
    if not cfg.method.search:
        return cfg, {}
    search = BilevelSearch(cfg, ws).run()
    search.derived = _rank_zero(search.derived)
    retrain_cfg = replace(cfg, method=search.derived)
    metrics: dict[str, Any] = {}
    metrics["spt_search"] = {
        "candidates": list(search.layers),
        "gate_probs": search.probabilities,
        "derived": method_to_dict(search.derived),
        "derived_layers": list(search.derived.layers),
        "search_steps": search.steps,
        "search_seconds": search.seconds,
        "prefix_cache": search.prefix_cache,
        "history": search.history,
        "search_config": method_to_dict(cfg.method),
    }
    metrics["steps_total"] = search.steps + retrain_cfg.train.steps
    return retrain_cfg, metrics


def describe_search(found: dict[str, Any]) -> str:
    """One line: the final gate probability per candidate layer and the layers retrained."""
    probs = ", ".join(f"{layer}:{p:.2f}" for layer, p in zip(found["candidates"], found["gate_probs"], strict=True))
    return f"spt gates (layer:P) {probs} -> retrained layers {found['derived_layers']}"


def _rank_zero(derived: Any) -> Any:
    """Under several Train ranks, rank 0's derived method on every rank. The ranks' gates are
    updated with the same averaged gradients, but nondeterministic kernels (GPU) could still tip a
    gate near its threshold differently on one rank, and DDP then meets models of different shapes."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return derived
    box = [derived]
    dist.broadcast_object_list(box, src=0)
    return box[0]
