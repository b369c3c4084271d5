"""benchmarks/quality.py's markdown table: every arm's median and range over seeds, the study's paragraph."""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

from reporting import machine, spread  # this script's directory is on sys.path

# (a, b) arms compared seed by seed where both ran (a seed's arms share its batches): ours against
# its peer, and the kv position rule's two arms
PAIRS = [("lora", "peft-lora"), ("deep-kv", "peft-prefix"), ("deep-kv-lr3e-2-noshift", "deep-kv-lr3e-2")]


def table(
    rows: list[dict[str, Any]],
    args: argparse.Namespace,
    peers: dict[str, float],
    variants: dict[str, tuple[str, float]],
) -> str:
    """`peers`: each peer arm's learning rate; `variants`: arm -> (peer arm, learning rate)."""
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if "error" not in r:
            by_arm.setdefault(r["arm"], []).append(r)
    cmd = "python benchmarks/quality.py " + " ".join(sys.argv[1:])
    commands = list(dict.fromkeys(r["command"] for r in rows if r.get("command")))
    unnamed = sum(1 for r in rows if not r.get("command") and "error" not in r)
    if args.time_steps:
        ms = {arm: statistics.median(r["ms_per_step"] for r in rs) for arm, rs in by_arm.items()}
        base_arm = "peft-prefix" if "peft-prefix" in ms else next(iter(ms), "")
        base = ms.get(base_arm)
        lines = [
            f"# Step time on the same batches: {args.task}, {args.model}",
            "",
            f"Each arm alone on the machine, {args.time_steps} timed steps after 5 warm-up steps, median step; "
            f"{args.rounds} rounds interleaved over the arms, median of the rounds; {args.threads} torch threads; "
            f"batch {args.batch_size}, max length {args.max_length} (padded to the batch's longest).",
            f"Machine: {machine()}. Command: `{cmd}`",
            "",
            f"| arm | ms / step (median of rounds) | vs {base_arm} | rounds |",
            "|---|---|---|---|",
        ]
        for arm, rs in by_arm.items():
            ratio = f"{ms[arm] / base:.2f}x" if base else "-"
            lines.append(f"| {arm} | {ms[arm]:.0f} | {ratio} | {len(rs)} |")
        return "\n".join(lines) + "\n"
    lines = [
        f"# Quality side by side: {args.task}, {args.model}, {args.steps} steps",
        "",
        f"Recipe for every row: AdamW (weight decay 0.01 unless the arm says), 6% warmup + linear decay, "
        f"batch {args.batch_size}, max length {args.max_length}, gradient clipping 1.0, {args.steps} steps, "
        f"dev evaluated every {args.steps // 5} steps, the best dev checkpoint scored once on the labelled "
        "held-out split (test). Same batches in the same order for every arm of a seed. Peers run through "
        "peft/transformers in their own venv; ours through autoprompt_search. Scores x100, median [min-max] "
        "over seeds. ms/step is measured while `--jobs` runs share the machine: read the step-time table "
        "for speed.",
        f"Machine: {machine()}. Commands: "
        + "; ".join(f"`{c}`" for c in commands or ([] if args.table_only else [cmd]))
        + (f" ({unnamed} rows predate recording the command: see results/quality/README.md)" if unnamed else ""),
        "",
        "| arm | side | seeds | dev median [range] | test median [range] | trainable params | % of model "
        "| ms/step | collapsed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, rs in by_arm.items():
        dev = [100 * r["dev"]["score"] for r in rs]
        test = [100 * r["test"]["score"] for r in rs if r.get("test")]
        trainable, total = rs[0]["trainable_params"], rs[0].get("total_params") or 0
        share = f"{100 * trainable / total:.2f}%" if total else "-"
        ms = statistics.median(r["ms_per_step"] for r in rs)
        side = "peer" if arm in peers or arm in variants else "ours"
        lines.append(
            f"| {arm} | {side} | {len(rs)} | {spread(dev)} | {spread(test)} | {trainable:,} | {share} | {ms:.0f} "
            f"| {sum(bool(r['collapsed']) for r in rs)}/{len(rs)} |"
        )
    lines += paired_lines(by_arm)
    studies = {r["arm"]: r["study"] for r in rows if r.get("study")}  # one paragraph per search seed
    for arm, study in studies.items():
        lines += ["", study_paragraph(arm, study, by_arm.get("full-ft", []))]
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["", "Failed runs: " + "; ".join(f"{r['arm']} seed {r['seed']}: {r['error']}" for r in errors)]
    return "\n".join(lines) + "\n"


def paired_lines(by_arm: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Test differences a - b per seed (x100) for every pair in PAIRS with a seed in common."""
    lines = []
    for a, b in PAIRS:
        tests = {
            arm: {r["seed"]: 100 * r["test"]["score"] for r in by_arm.get(arm, []) if r.get("test")} for arm in (a, b)
        }
        seeds = sorted(set(tests[a]) & set(tests[b]))
        if not seeds:
            continue
        diffs = [tests[a][s] - tests[b][s] for s in seeds]
        per_seed = ", ".join(f"seed {s}: {d:+.1f}" for s, d in zip(seeds, diffs, strict=True))
        lines.append(f"- {a} - {b}, test: {per_seed}; median {statistics.median(diffs):+.1f}")
    return ["", "Paired test differences (a seed's arms share its batches):", *lines] if lines else []


def study_paragraph(arm: str, study: dict[str, Any], full_ft: list[dict[str, Any]]) -> str:
    """The study arm's search: what it tried, what it chose and what it cost against full fine-tuning."""
    search, finalists = study["search_worker_seconds"], study["finalist_worker_seconds"]
    text = (
        f"The `{arm}` row (sampler seed {study.get('search_seed', 0)}): {study['trials']} searched trials ({', '.join(f'{n} {s}' for s, n in study['statuses'].items())}; "
        f"{study['search_steps']:,} training steps), then finalists ({study['finalist_steps']:,} steps); the row is "
        f"the best finalist's seeds (trial {study['best_trial']}, dev {100 * study['best_search_dev']:.1f} in the "
        f"search). Finalists' dev scores per seed: "
        + "; ".join(f"{t}: {', '.join(f'{100 * d:.1f}' for d in ds)}" for t, ds in study["finalists"].items())
        + f". Worker time: search {search:,.0f} s, finalists {finalists:,.0f} s."
    )
    if study.get("max_trainable"):
        text += (
            f" Parameter budget `--max-trainable {study['max_trainable']}`: {study['over_budget_draws']} draws over it "
            "were refused before training (PRUNED in Optuna, not counted among the trials)."
        )
    if full_ft:
        ft = statistics.median(r["train_seconds"] for r in full_ft)
        text += (
            f" One full fine-tuning run: {ft:,.0f} s (median); the search is {search / ft:.1f}x of it, "
            f"search + finalists {(search + finalists) / ft:.1f}x (both measured with `--jobs` runs sharing the machine)."
        )
    return text
