"""Gradient sync across Train workers: one flat all-reduce per dtype vs torch's DDP.

The trainer used to average a fused group's gradients with one flat all-reduce after backward
(`flat` below) instead of `DistributedDataParallel`, because members leave a group mid-run, so DDP
needs `find_unused_parameters`. This measured whether that was a reason: 2 gloo ranks (one torch
thread each), a fused group of `--members` key/value-prefix configurations over one packaged
MiniLM-L6, the same batches in each mode, and per mode the median step time of `--steps` timed
steps (after 3 warm-up steps) over `--rounds` interleaved rounds. Modes: `flat`, `ddp-unused` (DDP
with find_unused_parameters=True: what a group whose members can leave needs, and what the trainer
now uses), `ddp` (DDP with every parameter used every step: its best case, only valid while no
member has left). It also checks that one step of each mode leaves the same parameters.

Usage (CPU): python benchmarks/ddp_sync.py --out results/benchmarks/ddp_sync_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

MODES = ("flat", "ddp-unused", "ddp")


def configs(members: int, steps: int) -> list[Any]:
    from autoprompt_search.config import ExperimentConfig

    layer_sets = [[0, 1, 2, 3, 4, 5], [1, 3, 5], [0, 2, 4], [2, 3, 4, 5], [0, 1], [4, 5]]
    return [
        ExperimentConfig.from_dict({
            "model": "minilm-l6", "data": {"task": "trec", "max_length": 64},
            "method": {"name": "deep", "form": "kv", "layers": layer_sets[i % len(layer_sets)], "length": 20},
            "train": {"steps": steps, "batch_size": 32, "seed": 1 + i, "device": "cpu", "prefix_cache": False},
        })
        for i in range(members)
    ]  # fmt: skip


def flat_all_reduce(params: list[torch.Tensor], world: int) -> None:
    """Average the gradients over the ranks: one all-reduce of all of them flattened, per dtype."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(world)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def step_times(rank: int, args: argparse.Namespace, mode: str, ws: Any) -> tuple[list[float], list[torch.Tensor]]:
    from torch.nn.parallel import DistributedDataParallel

    from autoprompt_search.engine.batch import concat_batches
    from autoprompt_search.training.fused import FusedModel
    from autoprompt_search.training.workspace import build_model

    cfgs = configs(args.members, args.steps)
    models = [build_model(c, ws).train() for c in cfgs]
    fused = FusedModel(models).train()
    params = [p for m in models for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    model: Any = fused
    if mode != "flat":
        # broadcast_buffers off: the frozen backbone's buffers never change (its best setting here).
        model = DistributedDataParallel(fused, find_unused_parameters=mode == "ddp-unused", broadcast_buffers=False)
    split = ws.splits["train"]
    times = []
    for step in range(args.steps + 3):
        # Each rank its own 16 rows of a 32-row batch per member, the same rows in every mode.
        parts = [(i, split.batch(torch.arange(16) + 32 * (step * len(cfgs) + i) + 16 * rank)) for i in range(len(cfgs))]
        batch = concat_batches(parts)
        t0 = time.perf_counter()
        logits = model(batch)
        loss = torch.nn.functional.cross_entropy(logits, batch.labels, reduction="sum") / 16
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if mode == "flat":
            flat_all_reduce(params, dist.get_world_size())
        optimizer.step()
        times.append(time.perf_counter() - t0)
    return times[3:], [p.detach().clone() for p in params]


def worker(rank: int, args: argparse.Namespace, queue: Any) -> None:
    from autoprompt_search.training.workspace import prepare_workspace

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    ws = prepare_workspace(configs(1, args.steps)[0])
    out: dict[str, list[float]] = {m: [] for m in MODES}
    final: dict[str, list[torch.Tensor]] = {}
    for _ in range(args.rounds):
        for mode in MODES:
            torch.manual_seed(0)
            times, params = step_times(rank, args, mode, ws)
            out[mode].append(1000 * statistics.median(times))
            final[mode] = params
    same = {m: max(float((a - b).abs().max()) for a, b in zip(final["flat"], final[m], strict=True)) for m in MODES[1:]}
    if rank == 0:
        queue.put({"ms_per_step": out, "max_param_difference_vs_flat": same})
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--port", type=int, default=29511)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = [ctx.Process(target=worker, args=(rank, args, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    result = queue.get()
    for p in procs:
        p.join()
    medians = {m: statistics.median(v) for m, v in result["ms_per_step"].items()}
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}"
    lines = [
        "# Gradient sync over 2 ranks: one flat all-reduce vs DDP",
        "",
        f"Fused group of {args.members} kv-prefix members (L = 20) over MiniLM-L6, TREC batches of 16 rows per "
        f"member per rank, gloo, 1 thread per rank; median of {args.steps} steps, median of {args.rounds} "
        f"interleaved rounds. Machine: {machine}. Command: `python benchmarks/ddp_sync.py "
        f"--members {args.members} --steps {args.steps} --rounds {args.rounds}`.",
        "",
        "| mode | ms / step | vs flat | max parameter difference vs flat after the run |",
        "|---|---|---|---|",
    ]
    for mode in MODES:
        diff = result["max_param_difference_vs_flat"].get(mode)
        lines.append(
            f"| {mode} | {medians[mode]:.0f} | {medians[mode] / medians['flat']:.2f}x | "
            f"{'-' if diff is None else f'{diff:.1e}'} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).with_suffix(".md").write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(result | {"machine": machine}, indent=2) + "\n")


if __name__ == "__main__":
    main()
