"""The comparison's outputs: `runs.parquet` (every run), `report.md` (one table) and PNG plots."""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

import pyarrow as pa

from autoprompt_search.storage.tables import read_table, write_table
from autoprompt_search.study.options import Objective
from autoprompt_search.study.ranking import pareto_front

RUNS_FILE = "runs.parquet"
SCHEMA = pa.schema(
    [
        ("arm", pa.string()),
        ("approach", pa.string()),
        ("phase", pa.string()),  # selection (a search trial / the gate search) | final (one seed)
        ("seed", pa.int64()),
        ("trial", pa.string()),
        ("method", pa.string()),  # JSON method config
        ("status", pa.string()),
        ("lr", pa.float64()),
        ("dev_score", pa.float64()),  # best dev score (the checkpoint kept)
        ("eval_score", pa.float64()),  # dev score at the last evaluation (the gate search keeps no checkpoint)
        ("test_score", pa.float64()),  # that checkpoint on the held-out split (finals only)
        ("test_accuracy", pa.float64()),
        ("trainable_params", pa.int64()),
        ("passes", pa.int64()),  # training passes (forward + backward over a batch)
        ("seconds", pa.float64()),  # wall seconds of the run (selection: worker seconds)
        ("selection_passes", pa.int64()),  # the arm's selection budget spent (finals repeat it)
        ("selection_seconds", pa.float64()),
        ("collapsed", pa.bool_()),
        ("note", pa.string()),
    ]
)
PLOTS = ("accuracy_vs_params.png", "accuracy_vs_compute.png", "spt_gates.png")


def write_runs(out: Path, rows: list[dict[str, Any]]) -> None:
    write_table(out / RUNS_FILE, rows, SCHEMA)


def read_runs(out: str | Path) -> list[dict[str, Any]]:
    return read_table(Path(out) / RUNS_FILE, "compare", "run the comparison again with --overwrite")


def summarize_arms(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per arm (in run order): medians and spreads over seeds, parameters, compute."""
    arms: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["phase"] == "final":
            arms.setdefault(r["arm"], []).append(r)
    out = []
    for name, runs in arms.items():
        test = [100 * r["test_score"] for r in runs]
        dev = [100 * r["dev_score"] for r in runs]
        first = runs[0]
        final_seconds = sum(r["seconds"] for r in runs)
        out.append(
            {
                "arm": name, "approach": first["approach"], "method": json.loads(first["method"]),
                "seeds": len(runs), "test_median": statistics.median(test), "test_min": min(test),
                "test_max": max(test), "dev_median": statistics.median(dev), "dev_min": min(dev), "dev_max": max(dev),
                "trainable_params": first["trainable_params"], "selection_passes": first["selection_passes"] or 0,
                "selection_seconds": first["selection_seconds"] or 0.0, "final_passes": sum(r["passes"] for r in runs),
                "final_seconds": final_seconds, "total_seconds": (first["selection_seconds"] or 0.0) + final_seconds,
                "collapsed": sum(bool(r["collapsed"]) for r in runs), "lr": first["lr"], "note": first["note"] or "",
            }
        )  # fmt: skip
    return out


def describe_method(method: dict[str, Any]) -> str:
    m = dict(method)
    name = m.pop("name")
    if name == "probe":
        return "probe"
    keys = {
        "deep": ("layers", "length", "position", "split"),
        "late": ("layer", "length", "generator", "bottleneck"),
        "spt": ("layers", "length", "generator", "bottleneck"),
        "dp": ("length", "pool", "level", "choose"),
    }.get(name, tuple(m))
    shown = ", ".join(f"{k}={m[k]}" for k in keys if k in m and not (k == "split" and not m[k]))
    return f"{name}({shown})"


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points (params or compute, accuracy) that no other beats on both, by the first."""
    rows = [{"trial_id": str(i), "number": i, "cost": x, "score": y} for i, (x, y) in enumerate(points)]
    front = pareto_front(rows, [Objective("score", "max"), Objective("cost", "min")])
    return sorted((r["number"] for r in front), key=lambda i: points[i][0])


def write_comparison_report(
    out: Path, options: Any, base: Any, ws: Any, rows: list[dict[str, Any]], gates: dict[str, Any]
) -> Path:
    """`report.md` and the plots from the runs so far."""
    import torch

    summary = summarize_arms(rows)
    split_origin = ws.data.origin
    device = "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(0)
    lines = [
        f"# compare `{options.name}`: {base.data.task} on {base.model}",
        "",
        f"Held-out split (never seen by any search, gate or checkpoint choice): **test** = {split_origin.get('test')}.",
        f"Selection and checkpoints used **dev** = {split_origin.get('dev')}.",
        f"Recipe: {base.train.steps} steps, batch {base.train.batch_size}, max length {base.data.max_length}, "
        f"evaluation every {base.train.eval_interval} steps; seeds {list(options.seeds)}; score = {ws.data.task.metric}.",
        f"Matched selection budget: {options.search_trials} x {base.train.steps} = "
        f"{options.search_trials * base.train.steps} training passes for the discrete search and for the SPT-DARTS "
        "gate search (2 passes per step); DP and the baselines select nothing before training.",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, device {device}, torch {torch.__version__}.",
        "",
        "| arm | final configuration | held-out median [min-max] | dev median [min-max] | trainable params "
        "| selection passes | selection s | final s (all seeds) | collapsed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in sorted(summary, key=lambda s: -s["test_median"]):
        lines.append(
            f"| {s['arm']} | {describe_method(s['method'])} (lr {s['lr']:g}) | {s['test_median']:.1f} "
            f"[{s['test_min']:.1f}-{s['test_max']:.1f}] | {s['dev_median']:.1f} [{s['dev_min']:.1f}-{s['dev_max']:.1f}] "
            f"| {s['trainable_params']:,} | {s['selection_passes']:,} | {s['selection_seconds']:.0f} "
            f"| {s['final_seconds']:.0f} | {s['collapsed']}/{s['seeds']} |"
        )
    notes = [f"- {s['arm']}: {s['note']}" for s in summary if s["note"]]
    if notes:
        lines += ["", *notes]
    if gates:
        lines += [
            "",
            f"SPT-DARTS derived layers {gates['derived']} from candidates {gates['layers']}; "
            "gate probabilities per evaluation are in `spt_gates.png` and `spt_gates.json`.",
        ]
        (out / "spt_gates.json").write_text(json.dumps(gates, indent=2) + "\n", encoding="utf-8")
    lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in PLOTS if p != "spt_gates.png" or gates), ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    plot(out, summary, gates)
    return out / "report.md"


def plot(out: Path, summary: list[dict[str, Any]], gates: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if summary:
        for filename, key, label in (
            ("accuracy_vs_params.png", "trainable_params", "trainable parameters (log)"),
            ("accuracy_vs_compute.png", "total_seconds", "compute: selection + final seconds, all seeds (log)"),
        ):
            fig, ax = plt.subplots(figsize=(6.4, 4.2))
            points = [(float(s[key]), s["test_median"]) for s in summary]
            for s, (x, y) in zip(summary, points, strict=True):
                ax.errorbar(x, y, yerr=[[y - s["test_min"]], [s["test_max"] - y]], fmt="o", capsize=3)
                ax.annotate(s["arm"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
            front = pareto(points)
            ax.plot(
                [points[i][0] for i in front], [points[i][1] for i in front], "--", color="grey", label="Pareto front"
            )
            ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel("held-out score, median over seeds (%)")
            ax.legend(loc="lower right", fontsize=8)
            fig.tight_layout()
            fig.savefig(out / filename, dpi=120)
            plt.close(fig)
    if gates and gates.get("history"):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        steps = [h["step"] for h in gates["history"]]
        for i, layer in enumerate(gates["layers"]):
            style = "-" if layer in gates["derived"] else ":"
            ax.plot(steps, [h["gate_probs"][i] for h in gates["history"]], style, marker="o", label=f"layer {layer}")
        ax.set_xlabel("gate-search step")
        ax.set_ylabel("P(layer injects its prompt)")
        ax.set_ylim(0, 1)
        ax.set_title("SPT-DARTS gates (solid: derived layers)")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(out / "spt_gates.png", dpi=120)
        plt.close(fig)
