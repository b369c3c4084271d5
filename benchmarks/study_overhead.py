"""Ray's overhead in a search study: study wall time vs the trial compute it contains.

Runs the same seeded study (random sampler, FIFO, so every variant trains the same
configurations to the end) once per variant, each on a fresh local Ray, and prints side by side:
  compute   = sum over trials of training + evaluation seconds inside the Train worker
  ideal     = compute / max_concurrent (the study if Ray cost nothing)
  overhead  = 1 - ideal / study wall time (Ray's costs plus slots left idle, e.g. unequal jobs)
  fixed cost share = Train jobs x (startup + load + teardown) / (wall x max_concurrent)
plus the mean per-trial startup (trial start -> worker loop), load (model + data in the worker)
and teardown (last report -> trial end). Variants:
  ray-default-poll  Ray Train's default 2 s controller poll (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=2)
  fast-poll         what `autoprompt search` sets: a 0.25 s poll
  reuse-actors      fast-poll + Tune reuse_actors (a finished trial's process runs the next trial)
  preload           reuse-actors + Ray workers import torch and transformers when they start
  fuse-3            fast-poll + fused groups of 3 trials per Train job (one start-up per group)
  fuse-all-ddp      fast-poll + every trial in one fused Train job of 2 workers (DDP ranks, one per CPU):
                    one start-up for the study and no slot idle while another job finishes
Usage (embedded default: MiniLM-L6, TREC, search_spaces/all.yaml):
  python benchmarks/study_overhead.py --num-samples 6 --steps 200 --out results/study/overhead_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from statistics import mean
from typing import Any

from autoprompt_search.experiment_options import ExperimentOptions
from autoprompt_search.study.cluster import HEALTH_CHECK_ENV, RaySettings
from autoprompt_search.study.options import make_options
from autoprompt_search.study.runner import run_study

VARIANTS: dict[str, dict[str, Any]] = {
    "ray-default-poll": {"poll_s": "2.0"},
    "fast-poll": {"poll_s": "0.25"},
    "reuse-actors": {"poll_s": "0.25", "reuse_actors": True},
    "preload": {"poll_s": "0.25", "reuse_actors": True, "preload": ("torch", "transformers")},
    "fuse-3": {"poll_s": "0.25", "fuse": 3},
    "fuse-all-ddp": {"poll_s": "0.25", "fuse": 0, "workers_per_trial": 2, "max_concurrent": 1},  # fuse 0: all
}


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def measure(rows: list[dict[str, Any]], wall: float, concurrent: int) -> dict[str, Any]:
    """Per Train job (a trial, or a fused group: its members' rows share the job's times)."""
    jobs: dict[str, dict[str, Any]] = {}
    for r in rows:  # a group's job: its last member's worker time, its first start
        key = r.get("group_id") or r["trial_id"]
        job = jobs.setdefault(key, dict(r))
        job["worker_seconds"] = max(job["worker_seconds"], r["worker_seconds"])
        job["wall_seconds"] = max(job["wall_seconds"], r["wall_seconds"])
    trials, rows = len(rows), list(jobs.values())
    compute = sum(r["worker_seconds"] - r["load_seconds"] for r in rows)
    teardown = [r["wall_seconds"] - r["startup_seconds"] - r["worker_seconds"] for r in rows]
    return {
        "trials": trials,
        "train_jobs": len(rows),
        "trials_per_hour": trials / wall * 3600,
        "statuses": sorted({r["status"] for r in rows}),
        "study_wall_s": wall,
        "compute_s": compute,
        "ideal_wall_s": compute / concurrent,
        "overhead": 1 - (compute / concurrent) / wall,
        # Ray's fixed cost per Train job (start-up, loading, teardown) as a share of the study's slot time.
        "fixed_share": sum(r["startup_seconds"] + r["load_seconds"] for r in rows) / (wall * concurrent)
        + sum(teardown) / (wall * concurrent),
        "mean_startup_s": mean(r["startup_seconds"] for r in rows),
        "mean_trial_actor_s": mean(r["trial_actor_seconds"] for r in rows),
        "mean_load_s": mean(r["load_seconds"] for r in rows),
        "mean_teardown_s": mean(teardown),
        "mean_trial_wall_s": mean(r["wall_seconds"] for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="all")
    parser.add_argument("--model", default=None)
    parser.add_argument("--task", default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--num-samples", type=int, default=6)
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default="results/study/overhead_cpu")
    args = parser.parse_args()

    results = []
    for variant in args.variants.split(","):
        settings = VARIANTS[variant]
        os.environ[HEALTH_CHECK_ENV] = settings["poll_s"]
        base = ExperimentOptions(model=args.model, task=args.task, data_dir=args.data_dir, steps=args.steps)
        concurrent = settings.get("max_concurrent", args.max_concurrent)
        options = make_options(
            args.space, base, name=f"bench-{variant}", num_samples=args.num_samples,
            max_concurrent=concurrent, sampler="random", scheduler="fifo", seed=0,
            workers_per_trial=settings.get("workers_per_trial", 1),
        )  # fmt: skip
        options.reuse_actors = settings.get("reuse_actors", False)
        options.fuse = settings.get("fuse", 1) or args.num_samples
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            run = run_study(options, tmp, ray_settings=RaySettings(preload_modules=settings.get("preload", ())))
            total = time.perf_counter() - started
        row = {
            "variant": variant,
            "poll_s": float(settings["poll_s"]),
            **measure(run.rows, run.wall_seconds, concurrent),
        }
        row["with_ray_start_s"] = total
        results.append(row)
        print(json.dumps(row), flush=True)

    header = (
        f"# Study overhead on {machine()}\n\n"
        f"Command: `python benchmarks/study_overhead.py --space {args.space} --num-samples {args.num_samples} "
        f"--variants {args.variants} "
        f"--steps {args.steps} --max-concurrent {args.max_concurrent}` (model {args.model or 'minilm-l6'}, "
        f"task {args.task or 'trec'}; random sampler seed 0, FIFO: the same trials in every variant).\n\n"
    )
    table = [
        "| variant | trials | Train jobs | study wall s | trials/hour | compute s | ideal wall s | overhead | fixed cost share | startup s/job | (Tune trial actor) | load s/job | teardown s/job |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        table.append(
            f"| {r['variant']} | {r['trials']} | {r['train_jobs']} | {r['study_wall_s']:.1f} | {r['trials_per_hour']:.0f} | "
            f"{r['compute_s']:.1f} | {r['ideal_wall_s']:.1f} | "
            f"{r['overhead']:.1%} | {r['fixed_share']:.1%} | {r['mean_startup_s']:.1f} | {r['mean_trial_actor_s']:.1f} | {r['mean_load_s']:.1f} | {r['mean_teardown_s']:.1f} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(header + "\n".join(table) + "\n", encoding="utf-8")
    out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in results), encoding="utf-8")
    print("\n".join(table))


if __name__ == "__main__":
    main()
