"""`autoprompt compare`: discrete search vs SPT-DARTS vs dynamic prompting vs fixed baselines.

1. Load the model and data once. The held-out split is `test` when the data has one; otherwise
   the given dev split is held out as test and a seeded dev is carved from train
   (`data.dev_as_test`), so no search, gate or checkpoint choice ever sees the reported split.
2. Selection, under one matched budget of training passes: the discrete search is a real study
   (Ray Tune + Optuna, each trial a Ray Train run) in `<out>/search`; the SPT-DARTS gate search
   runs here on the first seed.
3. Finals: every arm's configuration trained once per seed in this process over the shared
   frozen backbone, best dev checkpoint scored on the held-out split. `runs.parquet` is
   rewritten atomically after every run, so an interrupted comparison keeps what it measured.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from autoprompt_search.backbones import BackboneInfo
from autoprompt_search.compare.arms import Arm, CompareOptions, baseline_arms, check_overrides
from autoprompt_search.compare.report import write_comparison_report, write_runs
from autoprompt_search.config import ExperimentConfig
from autoprompt_search.errors import ConfigError
from autoprompt_search.experiment_options import ExperimentOptions, experiment_from_options, parse_method_options
from autoprompt_search.methods import SptConfig, method_from_dict, method_to_dict
from autoprompt_search.storage.staging import replacing_directory
from autoprompt_search.study.space import SearchSpace, fix_steps
from autoprompt_search.training.loop import train_experiment
from autoprompt_search.training.workspace import Workspace, prepare_workspace

SEARCH_DIR = "search"
SPT_RECIPE = {"lr": 3e-3, "weight_decay": 0.1}  # SPT's generators are LPT's: the LPT baseline's recipe


def make_compare_options(space: str, base: ExperimentOptions, **knobs: Any) -> CompareOptions:
    """From command-line values: a space name or file, the base experiment, the comparison's options
    (`seeds` may be a count N: seeds 1..N; `spt` and `dp` KEY=VALUE lists)."""
    from autoprompt_search.study.options import resolve_space

    mapping, path = resolve_space(space)
    experiment = experiment_from_options(base).to_dict()
    if isinstance(knobs.get("seeds"), int):
        knobs["seeds"] = tuple(range(1, knobs["seeds"] + 1))
    for key in ("spt", "dp"):
        if isinstance(knobs.get(key), list):
            knobs[key] = parse_method_options(knobs[key])
    return CompareOptions(space=mapping, space_file=path, experiment=experiment, **knobs)


def prepare_compare_dir(results_dir: str | Path, name: str, overwrite: bool) -> Path:
    """The comparison's directory; an existing one is refused unless `overwrite`, and even then kept
    until the new comparison has started (`run_compare`)."""
    out = (Path(results_dir) / name).resolve()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"compare: {str(out)!r} already holds results; pass --overwrite or another --name")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"compare: {str(out)!r} is a file, not a directory; choose another --name")
    return out


def load_workspace(options: CompareOptions) -> tuple[ExperimentConfig, Workspace]:
    """The base experiment and its workspace, with a held-out test split guaranteed."""
    base = ExperimentConfig.from_dict(options.experiment)
    base.data.dev_as_test = True  # only acts when the data has no test split
    return base, prepare_workspace(base)


def search_space(options: CompareOptions, base: ExperimentConfig, num_layers: int) -> dict[str, Any]:
    """The discrete search's space with the comparison's step count (the matched budget)."""
    space = fix_steps(
        options.space,
        base.train.steps,
        "compare: the space searches train.steps; fix it so every arm trains the same steps",
    )
    SearchSpace.from_dict(space, options.space_file or "<space>").check_model(num_layers)
    return space


def check_compare(options: CompareOptions) -> tuple[ExperimentConfig, Workspace, dict[str, Any]]:
    """Everything that can be wrong, before anything is written or started."""
    check_overrides("dp", options.dp)
    spt = check_overrides("spt", options.spt)
    base, ws = load_workspace(options)
    spt.check(BackboneInfo.of(ws.backbone))
    space = search_space(options, base, ws.backbone.num_layers) if "discrete-search" in options.selected_arms else {}
    return base, ws, space


def run_compare(
    options: CompareOptions,
    results_dir: str | Path = "results/compare",
    overwrite: bool = False,
    ray_settings: Any = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Run every selected arm and write `runs.parquet`, `report.md` and the plots; returns the directory."""
    base, ws, space = check_compare(options)
    out = prepare_compare_dir(results_dir, options.name, overwrite)
    # The old comparison is moved aside now, removed at the end, and put back if this one fails.
    with replacing_directory(out):
        out.mkdir(parents=True, exist_ok=True)
        options.save(out)
        run_arms(options, base, ws, space, out, ray_settings, log)
    return out


def run_arms(
    options: CompareOptions,
    base: ExperimentConfig,
    ws: Workspace,
    space: dict[str, Any],
    out: Path,
    ray_settings: Any,
    log: Callable[[str], None],
) -> None:
    """Every selected arm: its search (if any), then its final runs over the seeds, then the report."""
    passes = options.search_trials * base.train.steps
    arms = baseline_arms(ws.backbone.num_layers)
    rows: list[dict[str, Any]] = []
    gates: dict[str, Any] = {}
    selected = options.selected_arms

    if "discrete-search" in selected:
        log(f"discrete search: {options.search_trials} trials of {base.train.steps} steps on Ray")
        arms["discrete-search"] = discrete_search(options, base, space, out, ray_settings, rows)
    if "spt-darts" in selected:
        log(f"SPT-DARTS gate search: {passes // 2} steps (= {passes} passes)")
        arms["spt-darts"], gates = spt_search(options, base, ws, passes // 2, rows)
    if "dp" in selected:
        arms["dp"] = Arm("dp", "dynamic prompting", {"name": "dp", **options.dp}, {"lr": 3e-2})
    write_runs(out, rows)

    for key in selected:
        arm = arms[key]
        for seed in options.seeds:
            log(f"final: {arm.name} seed {seed}")
            rows.append(final_run(arm, base, ws, seed))
            write_runs(out, rows)
    write_comparison_report(out, options, base, ws, rows, gates)


def discrete_search(
    options: CompareOptions,
    base: ExperimentConfig,
    space: dict[str, Any],
    out: Path,
    ray_settings: Any,
    rows: list[dict[str, Any]],
) -> Arm:
    """A real study (Ray Tune + Optuna + Ray Train); its best trial on dev becomes the arm's config."""
    from autoprompt_search.study.options import StudyOptions
    from autoprompt_search.study.runner import run_study

    study = StudyOptions(
        name=SEARCH_DIR,
        space=space,
        space_file=options.space_file,
        experiment=base.to_dict(),
        num_samples=options.search_trials,
        max_concurrent=options.max_concurrent,
        scheduler=options.scheduler,
        search_seed=options.search_seed,
        finalists=0,  # the comparison retrains every arm's choice itself, over its own seeds
    )
    run = run_study(study, out, overwrite=True, ray_settings=ray_settings)
    if run.interrupted:  # Ctrl-C inside the search (Tune returned): stop, as Ctrl-C does elsewhere
        raise KeyboardInterrupt
    finished = [r for r in run.rows if r["dev_score"] is not None and r["status"] in ("TERMINATED", "STOPPED")]
    if not finished:
        errors = "; ".join(sorted({r["error"] or r["status"] for r in run.rows}))
        raise ConfigError(f"compare: no discrete-search trial finished ({errors}); see {out / SEARCH_DIR}")
    for r in run.rows:
        sampled = json.loads(r["config"])
        rows.append(
            {
                "arm": "discrete-search", "phase": "selection", "seed": base.train.seed, "trial": r["trial_id"],
                "method": json.dumps(sampled["method"], sort_keys=True), "status": r["status"],
                "dev_score": r["dev_score"], "test_score": None, "trainable_params": r["trainable_params"],
                "passes": r["last_step"] or 0, "seconds": r["worker_seconds"] or 0.0,
            }
        )  # fmt: skip
    best = max(finished, key=lambda r: (r["dev_score"], -r["number"]))
    sampled = json.loads(best["config"])
    return Arm(
        "discrete-search",
        "discrete search",
        sampled["method"],
        sampled.get("train", {}),
        head=sampled.get("head", {}),
        selection_passes=sum(r["last_step"] or 0 for r in run.rows),
        selection_seconds=sum(r["worker_seconds"] or 0.0 for r in run.rows),
        note=f"best of {len(run.rows)} trials (trial {best['trial_id']}, dev {best['dev_score']:.4f})",
    )


def spt_search(
    options: CompareOptions, base: ExperimentConfig, ws: Workspace, steps: int, rows: list[dict[str, Any]]
) -> tuple[Arm, dict[str, Any]]:
    """SPT-DARTS's bi-level gate search on the first seed; the derived layer set becomes the arm's config."""
    from autoprompt_search.methods.spt_search import BilevelSearch

    spt = method_from_dict({"name": "spt", **options.spt, "search": True, "search_steps": max(1, steps)})
    assert isinstance(spt, SptConfig)
    cfg = replace(base, method=spt, train=replace(base.train, **{**SPT_RECIPE, "seed": options.seeds[0]}))
    found = BilevelSearch(cfg, ws).run()
    derived = method_to_dict(found.derived)
    last = found.history[-1] if found.history else {}
    rows.append(
        {
            "arm": "spt-darts", "phase": "selection", "seed": options.seeds[0], "trial": "gate-search",
            "method": json.dumps(derived, sort_keys=True), "status": "TERMINATED",
            "dev_score": None, "eval_score": last.get("eval_score"), "test_score": None, "trainable_params": None,
            "passes": 2 * found.steps, "seconds": found.seconds,
        }
    )  # fmt: skip
    gates = {"layers": list(found.layers), "history": found.history, "derived": list(found.derived.layers)}
    arm = Arm(
        "spt-darts",
        "spt-darts",
        derived,
        dict(SPT_RECIPE),
        selection_passes=2 * found.steps,
        selection_seconds=found.seconds,
        note=f"gates {', '.join(f'{layer}:{p:.2f}' for layer, p in zip(found.layers, found.probabilities, strict=True))}",
    )
    return arm, gates


def final_run(arm: Arm, base: ExperimentConfig, ws: Workspace, seed: int) -> dict[str, Any]:
    """Train the arm's configuration with `seed`; score the best dev checkpoint on the held-out split."""
    method = method_from_dict(arm.method)
    cfg = replace(
        base,
        method=method,
        train=replace(base.train, **{**arm.train, "seed": seed}),
        head=replace(base.head, **arm.head),
    )
    started = time.perf_counter()
    result = train_experiment(cfg, ws)
    m = result.metrics
    return {
        "arm": arm.name, "phase": "final", "seed": seed, "trial": "",
        "method": json.dumps(method_to_dict(result.config.method), sort_keys=True), "status": "TERMINATED",
        "dev_score": float(m["dev"]["score"]), "test_score": float(m["test"]["score"]),
        "test_accuracy": float(m["test"]["accuracy"]), "trainable_params": int(m["trainable_params"]),
        "passes": cfg.train.steps, "seconds": time.perf_counter() - started, "collapsed": bool(m["collapsed"]),
        "lr": cfg.train.lr, "selection_passes": arm.selection_passes, "selection_seconds": arm.selection_seconds,
        "approach": arm.approach, "note": arm.note,
    }  # fmt: skip
