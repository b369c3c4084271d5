"""The automl protocol's `study` contestant (benchmarks/automl.py): `autoprompt search` as a user
runs it, given the same budget B as each peer's selection, then its best configuration retrained
on seeds 1-3 and scored once on test.

One study per sampler seed, through the CLI in a subprocess: the shipped `all` space (the
portfolio enqueued first, learnt on other tasks only), `--budget <B>runs` under ASHA, the base
training seed 0 for the search (each trial selects on dev with seed 0, as the peers' select
runs), `--finalists 1 --seeds 3` (fresh seeds 1, 2, 3: the peers' final seeds, so the same
batches), the peers' recipe (batch, max length, steps, dev every steps/5). A study that was
interrupted is resumed; a finished one is read again. Rows: one `select` row (the search: its
trials, steps and worker seconds, the configuration it chose) and one `final` row per seed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def study_command(args: Any, budget_runs: int, sampler_seed: int, study_root: Path, name: str) -> list[str]:
    """The `autoprompt search` command of one sampler seed (or its resume)."""
    if (study_root / name / "study.json").is_file():
        return [sys.executable, "-m", "cli.main", "search", "--resume", name, "--results-dir", str(study_root)]
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    return [
        sys.executable, "-m", "cli.main", "search", "--name", name, "--space", "all", "--task", args.task, *data,
        "--model", args.model, "--max-length", str(args.max_length), "--steps", str(args.steps),
        "--batch-size", str(args.batch_size), "--eval-every", str(max(1, args.steps // 5)), "--seed", "0",
        "--budget", f"{budget_runs}runs", "--finalists", "1", "--seeds", "3", "--search-seed", str(sampler_seed),
        "--max-train", str(args.max_train), "--results-dir", str(study_root), "--max-concurrent", str(args.jobs),
        "--num-cpus", str(args.jobs),
    ]  # fmt: skip


def run_study_contestant(args: Any, budget_runs: int, sampler_seed: int) -> list[dict[str, Any]]:
    """Run (or resume) one sampler seed's study; its rows, or one error row."""
    from autoprompt_search.backbones import backbone_info
    from autoprompt_search.study.records import read_trials

    study_root = Path(args.study_dir).resolve()
    name = f"automl-{args.task}-{args.steps}-s{sampler_seed}" + (f"-n{args.max_train}" if args.max_train else "")
    contestant = f"study-s{sampler_seed}"
    started = time.perf_counter()
    proc = subprocess.run(study_command(args, budget_runs, sampler_seed, study_root, name), cwd=ROOT,
                          capture_output=True, text=True, check=False)  # fmt: skip
    wall = time.perf_counter() - started
    study = study_root / name
    if proc.returncode != 0 or not (study / "finished.json").is_file():
        error = proc.stderr.strip().splitlines()[-3:]
        return [{"contestant": contestant, "phase": "select", "lr": None, "seed": 0, "error": error}]
    rows = read_trials(study)
    searched = [r for r in rows if not r["finalist_of"]]
    finals = [r for r in rows if r["finalist_of"]]
    base_params = backbone_info(args.model).num_params
    chosen = json.loads(next(r for r in rows if r["trial_id"] == finals[0]["finalist_of"])["config"])
    head = {"contestant": contestant, "lr": chosen.get("train", {}).get("lr"), "config": chosen,
            "study": str(study.relative_to(ROOT)) if study.is_relative_to(ROOT) else str(study)}  # fmt: skip
    out = [
        head | {
            "phase": "select", "seed": 0, "dev": {"score": max((r["dev_score"] or 0.0) for r in searched)},
            "trials": len(searched), "statuses": {s: sum(r["status"] == s for r in searched) for s in
                                                  sorted({r["status"] for r in searched})},
            "steps_run": sum(int(r["last_step"] or 0) for r in searched),
            "worker_seconds": sum(r["worker_seconds"] or 0.0 for r in searched), "wall_seconds": wall,
            "trainable_params": finals[0]["trainable_params"], "base_params": base_params,
        }
    ]  # fmt: skip
    for r in sorted(finals, key=lambda r: r["seed"]):
        ok = r["status"] == "TERMINATED"
        out.append(head | {
            "phase": "final", "seed": int(r["seed"]), "dev": {"score": r["dev_score"] if ok else 0.0},
            "test": {"score": r["test_score"] if ok and r["test_score"] is not None else 0.0},
            "collapsed": r["status"] == "COLLAPSED", "status": r["status"], "steps_run": int(r["last_step"] or 0),
            "worker_seconds": r["worker_seconds"] or 0.0, "trainable_params": r["trainable_params"],
            "base_params": base_params,
        })  # fmt: skip
    for row in out:
        row["trainable_share"] = (row["trainable_params"] or 0) / base_params
    return out
