"""A 16-trial LPT insertion-layer study: ours (frozen-prefix cache on) vs the same Ray Tune study
run naively (every trial recomputes the frozen blocks below its insertion layer, every step and
every evaluation). Trials/hour and Ray's overhead, side by side in one run.

Both variants run the same trials (random sampler, seed 0, FIFO: every trial to the end), each on
a fresh local Ray, from the same warm token cache and an empty prefix cache. Space:
search_spaces/lpt_insertion.yaml (insertion layer, generator, length).

Usage:
  python benchmarks/lpt_study.py --task sst2 --data-dir ../shared/data/glue/SST-2 --max-length 64 \
      --num-samples 16 --steps 100 --out results/benchmarks/lpt_study_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from study_overhead import machine, measure

from autoprompt_search.experiment_options import ExperimentOptions, experiment_from_options
from autoprompt_search.study.options import make_options
from autoprompt_search.study.runner import run_study
from autoprompt_search.training.workspace import prepare_workspace

VARIANTS = {"naive (no cache)": False, "ours (prefix cache)": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="search_spaces/lpt_insertion.yaml")
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--out", default="results/benchmarks/lpt_study_cpu")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-lpt-cache-"))
    os.environ["AUTOPROMPT_CACHE"] = str(root)  # passed on to every trial
    results: list[dict[str, Any]] = []
    for variant, cache in VARIANTS.items():
        base = ExperimentOptions(
            model=args.model, task=args.task, data_dir=args.data_dir, max_length=args.max_length,
            steps=args.steps, eval_every=args.eval_every, prefix_cache=cache,
        )  # fmt: skip
        prepare_workspace(experiment_from_options(base))  # warm token cache, shared by both variants
        shutil.rmtree(root / "prefix", ignore_errors=True)
        options = make_options(
            args.space, base, name="bench-lpt", num_samples=args.num_samples, max_concurrent=args.max_concurrent,
            sampler="random", scheduler="fifo", seed=0,
        )  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            run = run_study(options, tmp)
            total = time.perf_counter() - started
        row: dict[str, Any] = {"variant": variant, **measure(run.rows, run.wall_seconds, args.max_concurrent)}
        row["with_ray_start_s"] = total
        row["trials_per_hour"] = row["trials"] / (row["study_wall_s"] / 3600)
        row["best_dev"] = max(r["dev_score"] for r in run.rows if r.get("dev_score") is not None)
        row["layers"] = sorted(json.loads(r["config"])["method"]["layer"] for r in run.rows)
        results.append(row)
        print(json.dumps(row), flush=True)
    shutil.rmtree(root, ignore_errors=True)

    naive = results[0]
    lines = [
        f"# 16-trial LPT insertion-layer study on {machine()}",
        "",
        f"Command: `python benchmarks/lpt_study.py --task {args.task} --data-dir {args.data_dir} --max-length "
        f"{args.max_length} --num-samples {args.num_samples} --steps {args.steps} --eval-every {args.eval_every} "
        f"--max-concurrent {args.max_concurrent}` (model {args.model}; space {args.space}; random sampler seed 0, "
        "FIFO: the same trials in both variants; insertion layers "
        f"{naive['layers']}).",
        "",
        "| variant | trials | study wall s | trials/hour | vs naive | compute s | Ray overhead | startup s/trial "
        "| load s/trial | best dev |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['variant']} | {r['trials']} | {r['study_wall_s']:.1f} | {r['trials_per_hour']:.0f} | "
            f"{r['trials_per_hour'] / naive['trials_per_hour']:.2f}x | {r['compute_s']:.1f} | {r['overhead']:.1%} | "
            f"{r['mean_startup_s']:.1f} | {r['mean_load_s']:.1f} | {r['best_dev']:.4f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text, encoding="utf-8")
    out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in results), encoding="utf-8")


if __name__ == "__main__":
    main()
