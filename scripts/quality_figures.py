"""Recompute the figures that results/quality/README.md and README.md's Results quote, from the
committed rows: one line per figure, `figure | value | source` (a file under results/quality/).

Scores are x100, `median [min-max]` over seeds as benchmarks/quality.py's tables print them. A gap
between two arms is the difference of the one-decimal medians the tables print (87.8 - 84.2 = 3.6,
although the unrounded medians are 3.67 apart): the prose quotes the printed figures.

    .venv/bin/python scripts/quality_figures.py
"""

from __future__ import annotations

import json
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

QUALITY = Path(__file__).resolve().parent.parent / "results" / "quality"
SST2, TREC = "sst2_minilm_cpu_r2.jsonl", "trec_minilm_cpu.jsonl"
KEYS = ("form", "layers", "layer", "length", "generator", "bottleneck")  # of a trial's method, as printed
SEED_SETS = {("peft-prompt", 3), ("peft-prompt", 4), ("prompt-tuning-as-peft", 2), ("prompt-tuning-as-peft", 3)}
# (file, arm, other arm, seeds of each; None: every seed): besides each study against the peers
GAPS: list[tuple[str, str, str, int | None, int | None]] = [
    (SST2, "deep-hidden", "deep-kv", None, None),
    (SST2, "prompt-tuning-as-peft", "peft-prompt", 2, 3),
    (SST2, "prompt-tuning-as-peft", "peft-prompt", 3, 4),
    (SST2, "prompt-tuning-as-peft", "peft-prompt", None, None),
    (TREC, "prompt-tuning-first", "prompt-tuning", None, None),
    (TREC, "peft-prompt", "prompt-tuning-first", None, None),
    (TREC, "peft-prompt", "prompt-tuning", None, None),
    (TREC, "peft-prompt", "prompt-tuning-as-peft", None, None),
    (TREC, "deep-kv", "deep-hidden", None, None),
    (TREC, "peft-prefix-lr8e-2", "peft-prefix", None, None),
    (TREC, "deep-kv-lr8e-2", "deep-kv", None, None),
    (TREC, "study-s1", "peft-prefix-lr8e-2", None, None),
]


def say(figure: str, value: str, source: str) -> None:
    print(f"{figure} | {value} | {source}")


def rows(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (QUALITY / name).read_text().splitlines() if line.strip()]


def scores(name: str, arm: str, split: str, seeds: int | None = None) -> list[float]:
    """An arm's scores x100; `seeds`: only seeds 1..seeds."""
    picked = [r for r in rows(name) if r["arm"] == arm and "error" not in r and (seeds is None or r["seed"] <= seeds)]
    return [100 * r[split]["score"] for r in picked if r.get(split)]


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"


def printed(values: list[float]) -> float:  # the median as the tables print it
    return float(f"{statistics.median(values):.1f}")


def arms(name: str) -> None:
    """Every arm's dev; test; trained weights; codes; and the seed subsets the prose quotes."""
    by_arm = {arm: [r for r in rows(name) if r["arm"] == arm] for arm in dict.fromkeys(r["arm"] for r in rows(name))}
    for arm, rs in by_arm.items():
        share = 100 * rs[0]["trainable_params"] / rs[0]["total_params"]
        codes = ", ".join(dict.fromkeys(str(r.get("code")) for r in rs))
        say(f"{name}: {arm} dev; test; weights ({len(rs)} seeds; code {codes})",
            f"{spread(scores(name, arm, 'dev'))}; {spread(scores(name, arm, 'test'))}; "
            f"{rs[0]['trainable_params']:,} ({share:.2f}%)", name)  # fmt: skip
        for r in rs if len(rs) > 3 else []:
            say(f"{name}: {arm} seed {r['seed']} (code {r.get('code')})",
                f"{100 * r['dev']['score']:.1f} dev / {100 * r['test']['score']:.1f} test", name)  # fmt: skip
    for arm, seeds in sorted(SEED_SETS) if name == SST2 else []:
        say(f"{name}: {arm} seeds 1-{seeds} dev; test",
            f"{spread(scores(name, arm, 'dev', seeds))}; {spread(scores(name, arm, 'test', seeds))}", name)  # fmt: skip


def gaps(name: str) -> None:
    pairs = [(a, b, None, None) for a in dict.fromkeys(r["arm"] for r in rows(name) if r.get("study"))
             for b in ("peft-prefix", "full-ft")]  # fmt: skip
    pairs += [(a, b, sa, sb) for f, a, b, sa, sb in GAPS if f == name]
    for a, b, sa, sb in pairs:
        d = [printed(scores(name, a, s, sa)) - printed(scores(name, b, s, sb)) for s in ("dev", "test")]
        seeds = f" (seeds 1-{sa} vs 1-{sb})" if sa else ""
        say(f"{name}: gap {a} - {b}{seeds}, dev / test", f"{d[0]:+.1f} / {d[1]:+.1f}", name)


def studies(name: str) -> None:
    """Each study's cost, its best trial's search dev against its finalists' median, its trials."""
    ft = statistics.median(r["train_seconds"] for r in rows(name) if r["arm"] == "full-ft")
    for arm, s in {r["arm"]: r["study"] for r in rows(name) if r.get("study")}.items():
        search, total = s["search_worker_seconds"], s["search_worker_seconds"] + s["finalist_worker_seconds"]
        say(f"{name}: {arm} search worker s; / one full-ft run ({ft:,.0f} s); with finalists",
            f"{search:,.0f}; {search / ft:.1f}x; {total / ft:.1f}x", name)  # fmt: skip
        found = float(f"{100 * s['best_search_dev']:.1f}")
        final = printed([100 * d for d in s["finalists"][s["best_trial"]]])
        say(f"{name}: {arm} best in the search -> finalists' median dev (fell by)",
            f"{found:.1f} -> {final:.1f} ({found - final:+.1f})", name)  # fmt: skip
        if s.get("max_trainable"):
            say(f"{name}: {arm} draws refused for the budget", str(s["over_budget_draws"]), name)
        source = f"{name.split('_')[0]}_{arm.replace('-', '_')}/trials.parquet"  # the study's directory
        if not (QUALITY / source).exists():
            say(f"{name}: {arm} trials", f"not committed ({source})", name)
            continue
        trials = sorted((t for t in pq.read_table(QUALITY / source).to_pylist() if not t["finalist_of"]),
                        key=lambda t: t["number"])  # fmt: skip
        span = [min(t["started_at"] for t in trials), max(t["finished_at"] for t in trials)]
        utc = [datetime.fromtimestamp(x, timezone.utc).strftime("%Y-%m-%d %H:%M") for x in span]
        say(f"{arm}: the search's trials ran (UTC)", f"{utc[0]} to {utc[1][-5:]}", source)
        for t in trials:
            c = json.loads(t["config"])
            what = c["method"]["name"] + "".join(
                f" {k}={v}" for k, v in c["method"].items() if k in KEYS and v is not None
            )
            dev = "-" if t["dev_score"] is None else f"{100 * t['dev_score']:.1f}"
            say(f"{arm} trial {t['number']}: {what} pooling={c['head']['pooling']} lr={c['train']['lr']:.1e}",
                f"{dev} dev, {t['status']} at step {t['last_step']}, {t['trainable_params']:,} weights, "
                f"{t['worker_seconds']:,.0f} s", source)  # fmt: skip


def other_tables() -> None:
    step = rows("step_time_sst2_minilm_cpu.jsonl")
    ms = {a: statistics.median(r["ms_per_step"] for r in step if r["arm"] == a) for a in {r["arm"] for r in step}}
    for arm in ("deep-kv", "deep-hidden"):
        say(f"step time {arm} / peft-prefix", f"{ms[arm] / ms['peft-prefix']:.2f}x", "step_time_sst2_minilm_cpu.jsonl")
    for arm in ("study-max0.5pct", "deep-kv"):
        secs = [r["ms_per_step"] / 1000 for r in rows(SST2) if r["arm"] == arm]
        say(f"{SST2}: {arm} s/step", f"{min(secs):.1f}-{max(secs):.1f}", SST2)
    lines = (QUALITY / "dp_estimator_cpu.md").read_text().splitlines()
    for estimator in ("mixing", "chosen-option"):
        cells = [line.split("|") for line in lines if line.startswith(f"| {estimator}")]
        accuracy = [float(c[4]) for c in cells]
        say(f"DP estimator {estimator}: seeds choosing j=3; accuracy",
            f"{sum(c[3].strip() == '3' for c in cells)}/{len(cells)}; {min(accuracy):.3f}-{max(accuracy):.3f}",
            "dp_estimator_cpu.md")  # fmt: skip
    for r in rows("../study/overhead_fused_ddp_cpu.jsonl"):
        say(f"study overhead, {r['variant']}", f"{100 * r['overhead']:.1f}%", "../study/overhead_fused_ddp_cpu.jsonl")


if __name__ == "__main__":
    for name in (SST2, TREC):
        arms(name)
        gaps(name)
        studies(name)
    other_tables()
