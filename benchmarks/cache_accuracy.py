"""Accuracy with the frozen-prefix cache equals accuracy without it: the same configuration
trained with the cache on and off for each seed on real data, medians over seeds, and the
end-to-end training time of each (one process, one loaded model, runs alternating).

Usage:
  python benchmarks/cache_accuracy.py --task sst2 --data-dir ../shared/data/glue/SST-2 --max-length 64 \
      --steps 300 --seeds 1,2,3 --out results/benchmarks/cache_accuracy_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from study_overhead import machine

from autoprompt_search.experiment_options import ExperimentOptions, experiment_from_options
from autoprompt_search.training.loop import train_experiment
from autoprompt_search.training.workspace import prepare_workspace


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--layer", type=int, default=3, help="LPT insertion layer")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--out", default="results/benchmarks/cache_accuracy_cpu")
    return parser.parse_args()


def main() -> None:
    args = parse_args()

    os.environ["AUTOPROMPT_CACHE"] = tempfile.mkdtemp(prefix="bench-cache-acc-")  # empty prefix cache
    rows: list[dict[str, Any]] = []
    ws = None
    for seed in [int(s) for s in args.seeds.split(",")]:
        for cache in (False, True):
            opts = ExperimentOptions(
                model=args.model, task=args.task, data_dir=args.data_dir, max_length=args.max_length,
                method="late", layer=args.layer, lr=args.lr, steps=args.steps, eval_every=args.eval_every,
                seed=seed, device="cpu", prefix_cache=cache,
            )  # fmt: skip
            cfg = experiment_from_options(opts)
            ws = ws or prepare_workspace(cfg)
            m = train_experiment(cfg, ws).metrics
            row = {
                "seed": seed,
                "cache": cache,
                "dev": m["dev"]["score"],
                "test": m["test"]["score"] if "test" in m else None,
                "wall_s": m["wall_seconds"],
                "steps_per_s": m["steps_per_s"],
                "prefix_cache": m["prefix_cache"],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)

    def med(cache: bool, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["cache"] == cache)

    def span(cache: bool, key: str) -> str:
        vals = sorted(100 * r[key] for r in rows if r["cache"] == cache)
        return f"{statistics.median(vals):.2f} [{vals[0]:.2f}-{vals[-1]:.2f}]"

    lines = [
        f"# Frozen-prefix cache: accuracy and training time on {machine()}",
        "",
        f"LPT at layer {args.layer} (NPG, L=5, r=128, lr {args.lr}), {args.model}, {args.task} (max length "
        f"{args.max_length}), {args.steps} steps, batch 32, evaluation every {args.eval_every} steps; best-dev "
        f"checkpoint scored on the test split; seeds {args.seeds}. Command: `python benchmarks/cache_accuracy.py "
        f"--task {args.task} --data-dir {args.data_dir} --max-length {args.max_length} --steps {args.steps} "
        f"--seeds {args.seeds}`",
        "",
        "| | dev acc, median [min-max] | test acc, median [min-max] | wall s per run (median) | train steps/s (median) |",
        "|---|---|---|---|---|",
    ]
    for cache in (False, True):
        lines.append(
            f"| cache {'on' if cache else 'off'} | {span(cache, 'dev')} | {span(cache, 'test')} | "
            f"{med(cache, 'wall_s'):.1f} | {med(cache, 'steps_per_s'):.2f} |"
        )
    same = all(a["dev"] == b["dev"] and a["test"] == b["test"] for a, b in zip(rows[::2], rows[1::2], strict=True))
    lines += [
        "",
        f"Per seed, cached and uncached runs {'reach identical' if same else 'differ in'} dev and test accuracy. "
        f"End to end the cached runs take {med(True, 'wall_s') / med(False, 'wall_s'):.2f}x the wall time "
        "(the first cached run fills the cache; later seeds reuse it).",
        "",
        "| seed | cache | dev | test | wall s | cache hits / misses |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        pc = r["prefix_cache"]
        hm = f"{pc['hits']} / {pc['misses']}" if pc else "-"
        lines.append(
            f"| {r['seed']} | {'on' if r['cache'] else 'off'} | {100 * r['dev']:.2f} | {100 * r['test']:.2f} | "
            f"{r['wall_s']:.1f} | {hm} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text, encoding="utf-8")
    out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    main()
