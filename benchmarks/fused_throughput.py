"""Fused trial groups vs one trial at a time: trials/hour for the same sampled trials.

Samples `--trials` configurations from a search space (Optuna's random sampler, seed 0), then
trains them (a) one after another in one process (`train`, the --fuse 1 path) and (c) in fused
groups of `--fuse` (`partition` + `train_group`), over one loaded backbone, and prints trials/hour
side by side with the best member's dev score and the same configuration's score trained alone.
The frozen-prefix cache is off in both (the first mode would otherwise warm it for the second).
(b), Ray fractional GPUs, needs the GPU machine: see benchmarks/README.md.

Usage (CPU):
  python benchmarks/fused_throughput.py --space layers --task sst2 --data-dir ../shared/data/glue/SST-2 \
      --trials 8 --fuse 4 --steps 40 --out results/benchmarks/fused_cpu
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import optuna

from autoprompt_search.backbones import BackboneInfo
from autoprompt_search.experiment_options import ExperimentOptions, experiment_from_options
from autoprompt_search.study.options import resolve_space
from autoprompt_search.study.space import SearchSpace, experiment_for
from autoprompt_search.training.fused import partition
from autoprompt_search.training.fused_loop import train_group
from autoprompt_search.training.loop import train_experiment
from autoprompt_search.training.workspace import prepare_workspace


def machine() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="layers")
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--fuse", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="results/benchmarks/fused_cpu")
    return parser.parse_args()


def main() -> None:
    args = parse_args()

    base = experiment_from_options(
        ExperimentOptions(model=args.model, task=args.task, data_dir=args.data_dir, max_length=args.max_length,
                     steps=args.steps, eval_every=args.steps, device=args.device, prefix_cache=False)
    )  # fmt: skip
    ws = prepare_workspace(base)
    ws.splits.pop("test", None)
    info = BackboneInfo.of(ws.backbone)
    mapping, _ = resolve_space(args.space)
    space = SearchSpace.from_dict(mapping, args.space)
    sample = space.sampler(info.num_layers)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    cfgs = []
    for _ in range(args.trials):
        sampled = sample(study.ask())
        sampled["train"] = {**sampled.get("train", {}), "steps": args.steps, "eval_every": args.steps}
        cfgs.append(experiment_for(base.to_dict(), sampled))

    t0 = time.perf_counter()
    alone = [train_experiment(cfg, ws) for cfg in cfgs]
    serial_s = time.perf_counter() - t0
    groups = partition(cfgs, info, args.fuse, float(ws.splits["train"].lengths.float().mean()))
    t0 = time.perf_counter()
    fused: list[Any] = [None] * len(cfgs)
    for group in groups:
        for i, result in zip(group, train_group([cfgs[i] for i in group], ws), strict=True):
            fused[i] = result
    fused_s = time.perf_counter() - t0

    best = max(range(len(cfgs)), key=lambda i: fused[i].metrics["dev"]["score"])
    row: dict[str, Any] = {
        "machine": machine(),
        "trials": len(cfgs),
        "fuse": args.fuse,
        "groups": [len(g) for g in groups],
        "serial_s": serial_s,
        "fused_s": fused_s,
        "serial_trials_per_hour": len(cfgs) / serial_s * 3600,
        "fused_trials_per_hour": len(cfgs) / fused_s * 3600,
        "ratio": serial_s / fused_s,
        "best_member": best,
        "best_fused_dev": fused[best].metrics["dev"]["score"],
        "best_alone_dev": alone[best].metrics["dev"]["score"],
        "max_abs_dev_diff": max(
            abs(f.metrics["dev"]["score"] - a.metrics["dev"]["score"]) for f, a in zip(fused, alone, strict=True)
        ),
    }
    print(json.dumps(row), flush=True)
    text = "\n".join([
        f"# Fused trial groups vs serial trials on {row['machine']}",
        "",
        f"{len(cfgs)} configurations sampled from `{args.space}` (random sampler, seed 0), {args.model}, {args.task} "
        f"(max length {args.max_length}), {args.steps} steps each, batch 32, one evaluation at the end, prefix cache off "
        f"in both; fused groups "
        f"of up to {args.fuse} (sizes {row['groups']}). Command: `python benchmarks/fused_throughput.py --space "
        f"{args.space} --task {args.task} --data-dir {args.data_dir} --trials {args.trials} --fuse {args.fuse} "
        f"--steps {args.steps}`",
        "",
        "| mode | wall s | trials/hour | vs serial |",
        "|---|---|---|---|",
        f"| (a) serial, one trial at a time | {serial_s:.1f} | {row['serial_trials_per_hour']:.0f} | 1.00x |",
        f"| (c) fused groups | {fused_s:.1f} | {row['fused_trials_per_hour']:.0f} | {row['ratio']:.2f}x |",
        "",
        f"Best member (trial {best}): dev {100 * row['best_fused_dev']:.2f} fused, {100 * row['best_alone_dev']:.2f} "
        f"trained alone; largest dev-score difference over all {len(cfgs)} trials "
        f"{100 * row['max_abs_dev_diff']:.2f} points (dropout draws differ between a batch of K and a batch of 1).",
    ]) + "\n"  # fmt: skip
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text, encoding="utf-8")
    out.with_suffix(".jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
