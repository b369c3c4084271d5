"""Quality side by side: our methods against peft/transformers peers, one recipe, several seeds.

Every run trains the packaged MiniLM-L6 with the same recipe (AdamW, 6% warmup + linear decay,
batch 32, gradient clipping 1.0, evaluation every steps/5 on dev, best dev checkpoint scored once
on the labelled held-out split) on the same batches in the same order. The peers run through
peft/transformers themselves in their own virtual environment (`--peer-python`, see
benchmarks/peft_peers.py); ours run through autoprompt_search. Each (arm, seed) is one
subprocess; `--jobs` run at once; rows are appended to `<out>.jsonl` as they finish (a rerun
skips what is there) and `<out>.md` is rewritten after each.

    python benchmarks/quality.py --task sst2 --data-dir ../shared/data/glue/SST-2 --steps 1000 \\
        --seeds 1 2 3 --jobs 2 --peer-python ../peers-venv/bin/python --out results/quality/sst2_minilm_cpu
    # the `study` arm: one `autoprompt search` (space `all`, P-tuning v2 enqueued first), its best
    # finalist's seeds are the rows; its compute (search + finalists) is set against full fine-tuning:
    python benchmarks/quality.py --task sst2 --data-dir ../shared/data/glue/SST-2 --steps 1000 \
        --arms study --study-trials 8 --study-dir ../bench-studies --out results/quality/sst2_minilm_cpu
    # step time on the same batches, arms one at a time, interleaved over rounds:
    python benchmarks/quality.py --task sst2 --data-dir ../shared/data/glue/SST-2 --time-steps 40 \\
        --rounds 3 --threads 2 --arms peft-prefix deep-kv deep-hidden peft-prompt prompt-tuning \\
        --peer-python ../peers-venv/bin/python --out results/quality/step_time_sst2_minilm_cpu
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from quality_table import table  # this script's directory is on sys.path
from reporting import code_version, machine

HERE = Path(__file__).resolve().parent
PEERS = {"peft-prompt": 3e-2, "peft-prefix": 1e-2, "peft-lora": 1e-3, "full-ft": 5e-5, "hf-probe": 1e-2}  # arm -> lr
# Diagnostic arms: a peer run with another learning rate (arm -> (peer arm, lr)). 8e-2 is the rate
# the TREC studies' best kv configurations were sampled at, so `peft-prefix-lr8e-2` asks whether a
# user of peft gets the study's gain by raising the rate alone.
PEER_VARIANTS = {"peft-prefix-lr8e-2": ("peft-prefix", 8e-2)}


def our_arms(num_layers: int) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """arm -> (method, train overrides); learning rates as in the papers and results/engine."""
    every = list(range(num_layers))
    return {
        "probe": ({"name": "probe"}, {"lr": 1e-2}),
        "prompt-tuning": ({"name": "deep", "layers": [0], "length": 20}, {"lr": 3e-2}),
        "prompt-tuning-first": ({"name": "deep", "layers": [0], "length": 20}, {"lr": 3e-2}),
        "prompt-tuning-normal": ({"name": "deep", "layers": [0], "length": 20, "init": "normal"}, {"lr": 3e-2}),
        "prompt-tuning-as-peft": ({"name": "deep", "layers": [0], "length": 20, "init": "normal"}, {"lr": 3e-2}),
        "deep-hidden": ({"name": "deep", "layers": every, "length": 20}, {"lr": 1e-2}),
        "deep-kv": ({"name": "deep", "layers": every, "length": 20, "form": "kv"}, {"lr": 1e-2}),
        # diagnostics (not a method's preset): deep-kv at the studies' sampled rate, then with mean pooling
        "deep-kv-lr8e-2": ({"name": "deep", "layers": every, "length": 20, "form": "kv"}, {"lr": 8e-2}),
        "deep-kv-lr8e-2-mean": ({"name": "deep", "layers": every, "length": 20, "form": "kv"}, {"lr": 8e-2}),
        # the kv position rule (automl issue): P-tuning v2 at the automl protocol's chosen rate, the
        # text at positions L.. (as peft and a KV cache: today's rule when layer 0 is prompted) or at 0..
        "deep-kv-lr3e-2": ({"name": "deep", "layers": every, "length": 20, "form": "kv"}, {"lr": 3e-2}),
        "deep-kv-lr3e-2-noshift": ({"name": "deep", "layers": every, "length": 20, "form": "kv"}, {"lr": 3e-2}),
        "lpt-half": (
            {"name": "late", "layer": num_layers // 2, "length": 5, "generator": "npg", "bottleneck": 128},
            {"lr": 3e-3, "weight_decay": 0.1},
        ),
        # instance-level dynamic prompting: position, length and a 4-set pool chosen per input
        "dp": ({"name": "dp", "length": 20, "pool": 4, "level": "instance"}, {"lr": 3e-2}),
        # SPT-DARTS: gates over layers 1..N-1 learned bi-level, then the derived layer set retrained
        "spt-darts": ({"name": "spt", "search": True, "length": 5, "bottleneck": 128}, {"lr": 3e-3}),
        # LoRA as the peft-lora peer sets it: r 8, alpha 16, dropout 0.1, query and value of every layer
        "lora": ({"name": "lora", "targets": "query,value", "rank": 8, "alpha": 16.0, "dropout": 0.1}, {"lr": 1e-3}),
    }


# Arms whose classifier reads something else than the pooled [CLS]: `prompt-tuning-first` reads
# the first prompt slot, where peft's prompt tuning (peft-prompt) puts its classifier;
# `prompt-tuning-normal` also starts its prompt from N(0, 1) as peft's default (RANDOM) init does;
# `prompt-tuning-as-peft` adds BertForSequenceClassification's dropout 0.1 before the classifier.
ARM_HEADS = {
    "prompt-tuning-first": {"pooling": "first"},
    "prompt-tuning-normal": {"pooling": "first"},
    "prompt-tuning-as-peft": {"pooling": "first", "dropout": 0.1},
    "deep-kv-lr8e-2-mean": {"pooling": "mean"},
    "lora": {"dropout": 0.1},  # BertForSequenceClassification's dropout before the classifier, as peft-lora's
}


def keep_text_positions() -> None:
    """Diagnostic: key/value prefixes take no logical positions, so the text keeps 0..T-1 (the rule
    a layer set without block 0 has today) whatever the layer set."""
    from autoprompt_search.methods.base import SlotLayout
    from autoprompt_search.methods.deep import DeepPrompt

    def layout(self: DeepPrompt, ctx: Any) -> SlotLayout:
        assert self.kv, "the -noshift arms are kv prefixes"
        return SlotLayout.uniform(ctx.input_ids.shape[0], 0, self.config.layers[0], ctx.input_ids.device)

    DeepPrompt.layout = layout  # type: ignore[method-assign]


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    """One (arm, seed) of ours in this process: a full training run, or `--time-steps` timed steps."""
    import torch
    import transformers

    from autoprompt_search.backbones import load_backbone
    from autoprompt_search.config import ExperimentConfig
    from autoprompt_search.training.loop import train_experiment
    from autoprompt_search.training.recipe import lr_lambda, train_batches
    from autoprompt_search.training.workspace import build_model, prepare_workspace

    code = code_version()  # the code that starts the run (the checkout may change while it runs)
    torch.set_num_threads(args.threads)
    if args.one.endswith("-noshift"):
        keep_text_positions()
    backbone = load_backbone(args.model)
    method, overrides = our_arms(backbone.num_layers)[args.one]
    steps = args.time_steps + 5 if args.time_steps else args.steps
    train_cfg = {"steps": steps, "batch_size": args.batch_size, "seed": args.seed, "device": "cpu"} | overrides
    data = {"task": args.task, "data_dir": args.data_dir, "max_length": args.max_length}
    head = ARM_HEADS.get(args.one, {})
    cfg = ExperimentConfig.from_dict(
        {"model": args.model, "data": data, "method": method, "head": head, "train": train_cfg}
    )
    ws = prepare_workspace(cfg, backbone=backbone)
    row: dict[str, Any] = {
        "arm": args.one,
        "seed": args.seed,
        "threads": args.threads,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    if args.time_steps:  # the same loop as the peers' (peft_peers.py), through our model
        torch.manual_seed(args.seed)
        model = build_model(cfg, ws).train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(steps, 0.06))
        split = ws.splits["train"]
        batches = train_batches(torch.arange(len(split)), args.batch_size, args.seed)
        times = []
        for _ in range(steps):
            batch = split.batch(next(batches))
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(batch), batch.labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            times.append(time.perf_counter() - t0)
        return row | {
            "ms_per_step": 1000 * sorted(times[5:])[len(times[5:]) // 2],
            "trainable_params": sum(p.numel() for p in params),
        }
    result = train_experiment(cfg, ws)
    m = result.metrics
    return row | {
        "dev": m["dev"],
        "test": m.get("test"),
        "best_step": m["best_step"],
        "collapsed": m["collapsed"],
        "trainable_params": m["trainable_params"],
        "total_params": m["trainable_params"] + sum(p.numel() for p in backbone.parameters()),
        "train_seconds": m["train_seconds"],
        "ms_per_step": 1000 * m["train_seconds"] / steps,
        "config": cfg.to_dict(),
        "code": code,
    }


def command(arm: str, seed: int, args: argparse.Namespace) -> list[str]:
    shared = ["--seed", str(seed), "--model", args.model, "--task", args.task, "--data-dir", args.data_dir]
    shared += ["--max-length", str(args.max_length), "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    shared += ["--threads", str(args.threads), "--time-steps", str(args.time_steps)]
    if arm in PEERS or arm in PEER_VARIANTS:
        if not args.peer_python:
            raise SystemExit(f"error: arm {arm} runs through peft: give --peer-python (a venv with peft)")
        peer, lr = PEER_VARIANTS.get(arm, (arm, PEERS.get(arm, 0.0)))
        return [args.peer_python, str(HERE / "peft_peers.py"), "--arm", peer, "--lr", str(lr), *shared]
    return [sys.executable, str(Path(__file__).resolve()), "--one", arm, *shared]


def run_study(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The `study` arm, as a user runs it: `autoprompt search` over the shipped `all` space with the
    benchmark's recipe, P-tuning v2 (kv prefixes at every layer, L=20, lr 1e-2: the peft-prefix
    peer's setting) enqueued as the first trial, ASHA, then finalists over fresh seeds. The base
    seed is 0 so the finalists train with seeds 1..S, the same batches as the other arms' seeds.
    Rows: one per seed of the best finalist (best median dev), with the whole study's compute."""
    import pyarrow.parquet as pq

    from autoprompt_search.backbones import load_backbone

    code = code_version()  # when the study starts
    started = time.perf_counter()
    arm = study_arm(args.study_search_seed, args.study_max_trainable, args.study_grace_period)
    name = f"{args.task}-{args.model}-{args.steps}-{arm}"
    enqueue = Path(args.study_dir) / f"{name}-ptuning-v2.yaml"
    enqueue.parent.mkdir(parents=True, exist_ok=True)
    backbone = load_backbone(args.model)
    layers = list(range(backbone.num_layers))
    enqueue.write_text(json.dumps({"method": {"name": "deep", "form": "kv", "layers": layers, "length": 20},
                                   "train": {"lr": 1e-2}}))  # fmt: skip
    cmd = [str(Path(sys.executable).with_name("autoprompt")), "search", "--space", "all", "--name", name]
    cmd += ["--results-dir", args.study_dir, "--overwrite", "--model", args.model, "--task", args.task]
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []  # none: the task's packaged data (TREC)
    cmd += ["--max-length", str(args.max_length), "--batch-size", str(args.batch_size)]
    cmd += ["--steps", str(args.steps), "--eval-every", str(args.steps // 5), "--seed", "0"]
    cmd += ["--num-samples", str(args.study_trials), "--max-concurrent", str(args.jobs), "--scheduler", "asha"]
    cmd += ["--finalists", str(args.study_finalists), "--seeds", str(len(args.seeds)), "--enqueue", str(enqueue)]
    cmd += ["--search-seed", str(args.study_search_seed)]
    cmd += ["--max-trainable", args.study_max_trainable] if args.study_max_trainable else []
    cmd += ["--grace-period", str(args.study_grace_period)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return [{"arm": arm, "seed": 0, "error": proc.stderr.strip().splitlines()[-1:]}]
    rows = pq.read_table(Path(args.study_dir) / name / "trials.parquet").to_pylist()
    searched = [r for r in rows if not r["finalist_of"]]
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["finalist_of"]:
            runs.setdefault(r["finalist_of"], []).append(r)

    def median_dev(trial: str) -> float:  # a collapsed or failed seed counts as the worst value
        return statistics.median(r["dev_score"] if r["status"] == "TERMINATED" else 0.0 for r in runs[trial])

    best = max(runs, key=median_dev)
    chosen = next(r for r in searched if r["trial_id"] == best)
    study = {
        "trials": len(searched),
        "statuses": {s: sum(r["status"] == s for r in searched) for s in {r["status"] for r in searched}},
        "search_worker_seconds": sum(r["worker_seconds"] or 0.0 for r in searched),
        "search_steps": sum(r["last_step"] or 0 for r in searched),
        "finalist_worker_seconds": sum(r["worker_seconds"] or 0.0 for rs in runs.values() for r in rs),
        "finalist_steps": sum(r["last_step"] or 0 for rs in runs.values() for r in rs),
        "search_seed": args.study_search_seed,
        "max_trainable": args.study_max_trainable,
        "grace_period": args.study_grace_period,
        "over_budget_draws": over_budget_draws(Path(args.study_dir) / name),
        "best_trial": best,
        "best_search_dev": chosen["dev_score"],
        "finalists": {t: [r["dev_score"] for r in rs] for t, rs in runs.items()},
        "wall_seconds": time.perf_counter() - started,
    }
    frozen = sum(p.numel() for p in backbone.parameters())
    return [
        {
            "arm": arm,
            "seed": r["seed"],
            "dev": {"score": r["dev_score"]},
            "test": {"score": r["test_score"]} if r["test_score"] is not None else None,
            "collapsed": r["status"] == "COLLAPSED",
            "trainable_params": r["trainable_params"],
            "total_params": r["trainable_params"] + frozen,
            "train_seconds": r["worker_seconds"],
            "ms_per_step": 1000 * (r["worker_seconds"] or 0.0) / max(1, r["last_step"] or 1),
            "config": json.loads(r["config"]),
            "study": study,
            "code": code,
        }
        for r in runs[best]
    ]


def run_one(arm: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.run(command(arm, seed, args), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"arm": arm, "seed": seed, "error": proc.stderr.strip().splitlines()[-1:]}
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    return row | {"arm": arm, "wall_seconds": time.perf_counter() - started}  # a peer variant: its own name


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)  # internal: run one arm of ours here
    ap.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--arms", nargs="+", default=["peft-prefix", "deep-kv", "deep-hidden"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (accuracy mode)")
    ap.add_argument("--time-steps", type=int, default=0, help="step-time mode: time this many steps per run")
    ap.add_argument("--rounds", type=int, default=3, help="step-time mode: interleaved rounds over the arms")
    ap.add_argument("--peer-python", default="")
    ap.add_argument("--study-trials", type=int, default=8, help="study arm: trials in the search")
    ap.add_argument("--study-finalists", type=int, default=1, help="study arm: configurations retrained over --seeds")
    ap.add_argument(
        "--study-search-seed", type=int, default=0, help="study arm: Optuna's sampler seed (row `study-s<N>`)"
    )
    ap.add_argument("--study-max-trainable", default="", help="study arm: --max-trainable of the search (e.g. 0.5%%)")
    ap.add_argument(
        "--study-grace-period", type=int, default=1, help="study arm: evaluations before ASHA may stop a trial"
    )
    ap.add_argument("--study-dir", default="../bench-studies", help="study arm: where the study directory goes")
    ap.add_argument("--out", default="")
    ap.add_argument("--table-only", action="store_true", help="rewrite <out>.md from <out>.jsonl; run nothing")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_ours(args)), flush=True)
        return
    if not args.out:
        raise SystemExit("error: --out is required (the path stem of the .jsonl and .md results)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs_path = out.with_suffix(".jsonl")
    rows = [json.loads(line) for line in runs_path.read_text().splitlines()] if runs_path.exists() else []

    if args.table_only:
        out.with_suffix(".md").write_text(table(rows, args, PEERS, PEER_VARIANTS))
        return

    def record(row: dict[str, Any]) -> None:
        row |= {"task": args.task, "steps": args.steps, "time_steps": args.time_steps, "machine": machine()}
        row["command"] = "python benchmarks/quality.py " + " ".join(sys.argv[1:])
        with runs_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        rows.append(row)
        out.with_suffix(".md").write_text(table(rows, args, PEERS, PEER_VARIANTS))
        print(json.dumps({k: row.get(k) for k in ("arm", "seed", "ms_per_step", "error")}), flush=True)

    if args.time_steps:  # one at a time, interleaved, so the arms share the machine's state
        for _ in range(args.rounds):
            for arm in args.arms:
                record(run_one(arm, 1, args))
        return
    done = {(r["arm"], r["seed"]) for r in rows if "error" not in r}
    arms = [arm for arm in args.arms if arm != "study"]
    study = study_arm(args.study_search_seed, args.study_max_trainable, args.study_grace_period)
    todo = [(arm, seed) for seed in args.seeds for arm in arms if (arm, seed) not in done]
    with ThreadPoolExecutor(args.jobs) as pool:
        for row in pool.map(lambda job: run_one(*job, args), todo):
            record(row)
    if "study" in args.arms and not any(arm == study for arm, _ in done):  # one study: its own --jobs trials
        for row in run_study(args):
            record(row)


def over_budget_draws(study_dir: Path) -> int:
    """Configurations the search drew over its parameter budget and never trained (Optuna's journal)."""
    from autoprompt_search.study.budget import refused_draws
    from autoprompt_search.study.group_search import open_study
    from autoprompt_search.study.options import StudyOptions

    return refused_draws(open_study(str(study_dir / "optuna.journal"), StudyOptions.load(study_dir).name).trials)


def study_arm(search_seed: int, max_trainable: str = "", grace_period: int = 1) -> str:
    """The study arm's name: `study` for sampler seed 0, `study-s<N>` for another search of the same
    space; `-max<budget>` where the search has a trainable-parameter budget (`study-max0.5pct`);
    `-g<N>` where ASHA's grace period is not 1 evaluation."""
    budget = f"-max{max_trainable.replace('%', 'pct')}" if max_trainable else ""
    grace = f"-g{grace_period}" if grace_period != 1 else ""
    return (f"study-s{search_seed}" if search_seed else "study") + budget + grace


if __name__ == "__main__":
    main()
