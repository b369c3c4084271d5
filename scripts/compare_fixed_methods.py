"""Accuracy of the fixed baselines on real data: linear probe, prompt tuning, all-layer deep
prompts and LPT at k = N/2, medians over seeds. Appends one JSON line per run, then writes a
Markdown table.

    python scripts/compare_fixed_methods.py --data-dir ../shared/data/glue/SST-2 --task sst2 \
        --steps 500 --seeds 1 2 3 --out results/engine/sst2_minilm_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

import torch

from autoprompt_search.backbones import load_backbone
from autoprompt_search.config import ExperimentConfig, TrainConfig
from autoprompt_search.data import DataConfig
from autoprompt_search.methods import DeepConfig, LateConfig, ProbeConfig
from autoprompt_search.training.loop import train_experiment
from autoprompt_search.training.workspace import prepare_workspace


def methods(num_layers: int, probe_lrs: list[float]) -> dict[str, tuple[object, float, float]]:
    """name -> (method config, lr, weight decay); lrs follow the papers / the reference table.

    The linear probe also runs at the extra `probe_lrs`, so the baseline gets its best shot.
    """
    table: dict[str, tuple[object, float, float]] = {"linear probe": (ProbeConfig(), 1e-2, 0.01)}
    table.update({f"linear probe (lr {lr:g})": (ProbeConfig(), lr, 0.01) for lr in probe_lrs})
    return table | {
        "prompt tuning (L=20)": (DeepConfig(layers=(0,), length=20), 3e-2, 0.01),
        f"deep prompts, all {num_layers} layers (L=20)": (
            DeepConfig(layers=tuple(range(num_layers)), length=20),
            1e-2,
            0.01,
        ),
        f"LPT k={num_layers // 2} (NPG, L=5, r=128)": (LateConfig(layer=num_layers // 2, length=5), 3e-3, 0.1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--probe-lrs", type=float, nargs="*", default=[0.1, 0.3])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs_path = out.with_suffix(".jsonl")
    done = set()
    if runs_path.exists():
        done = {(r["method"], r["seed"]) for r in map(json.loads, runs_path.read_text().splitlines())}
    data = DataConfig(task=args.task, data_dir=args.data_dir, max_length=args.max_length)
    base = ExperimentConfig(model=args.model, data=data)
    backbone = load_backbone(args.model)
    ws = prepare_workspace(base, backbone=backbone)
    for seed in args.seeds:
        for name, (method, lr, wd) in methods(backbone.num_layers, args.probe_lrs).items():
            if (name, seed) in done:
                continue
            train_cfg = TrainConfig(
                steps=args.steps,
                lr=lr,
                weight_decay=wd,
                batch_size=args.batch_size,
                eval_every=max(1, args.steps // 5),
                seed=seed,
                device=args.device,
            )
            cfg = ExperimentConfig(model=args.model, data=data, method=method, train=train_cfg)
            result = train_experiment(cfg, ws)
            m = result.metrics
            row = {
                "method": name,
                "seed": seed,
                "dev": m["dev"]["score"],
                "test": m.get("test", {}).get("score"),
                "best_step": m["best_step"],
                "collapsed": m["collapsed"],
                "trainable_params": m["trainable_params"],
                "steps_per_s": m["steps_per_s"],
                "device": m["device"],
                "config": cfg.to_dict(),
            }
            with runs_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(
                f"{name} seed {seed}: dev {row['dev']:.4f} test {row['test']} {row['steps_per_s']:.2f} steps/s",
                flush=True,
            )
    write_table(runs_path, out.with_suffix(".md"), args)


def write_table(runs_path: Path, md_path: Path, args: argparse.Namespace) -> None:
    rows = [json.loads(line) for line in runs_path.read_text().splitlines()]
    by_method: dict[str, list[dict]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    lines = [
        f"# {args.task}: fixed prompt methods on {args.model}",
        "",
        f"Recipe: AdamW, warmup 6% + linear decay, batch {args.batch_size}, max length {args.max_length}, "
        f"{args.steps} steps, evaluation every {args.steps // 5} steps, best dev checkpoint kept; "
        f"seeds {sorted({r['seed'] for r in rows})}. Dev = the split the best checkpoint was chosen on; "
        "test = the labelled held-out file, evaluated once with that checkpoint.",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, device {rows[0]['device']}, "
        f"torch {torch.__version__}.",
        f"Command: `python scripts/compare_fixed_methods.py --task {args.task} --data-dir {args.data_dir} "
        f"--steps {args.steps} --seeds {' '.join(map(str, args.seeds))} "
        f"--probe-lrs {' '.join(f'{x:g}' for x in args.probe_lrs)} --out {args.out}`",
        "",
        "| method | lr | dev acc median [min-max] | test acc median [min-max] | trainable params | steps/s "
        "| collapsed runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rs in by_method.items():
        dev = [r["dev"] * 100 for r in rs]
        test = [r["test"] * 100 for r in rs if r["test"] is not None]
        test_cell = f"{statistics.median(test):.1f} [{min(test):.1f}-{max(test):.1f}]" if test else "-"
        lines.append(
            f"| {name} | {rs[0]['config']['train']['lr']:g} | {statistics.median(dev):.1f} [{min(dev):.1f}-{max(dev):.1f}] | {test_cell} | "
            f"{rs[0]['trainable_params']:,} | {statistics.median(r['steps_per_s'] for r in rs):.2f} | "
            f"{sum(r['collapsed'] for r in rs)}/{len(rs)} |"
        )
    md_path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
