"""`autoprompt`: parse the command line and call the library; nothing else lives here."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

from autoprompt_search.errors import ConfigError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Search where and how to prompt-tune a frozen transformer.",
    context_settings={"help_option_names": ["-h", "--help"]},
)

Opt = typer.Option


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"autoprompt-search {version('autoprompt-search')}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, Opt("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Search where and how to prompt-tune a frozen transformer."""
    quiet_libraries()


def fail(exc: Exception) -> NoReturn:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


@app.command()
def train(
    config: Annotated[str, Opt("--config", help="YAML/JSON experiment (e.g. one written by `export`)")] = "",
    model: Annotated[Optional[str], Opt(help="packaged name (minilm-l6), model directory or hub id")] = None,
    task: Annotated[
        Optional[str], Opt(help="registered task: sst2, rte, mrpc, cola, qnli, mnli, qqp, trec, superglue-*")
    ] = None,
    source: Annotated[Optional[str], Opt(help="auto | files | hub | package")] = None,
    data_dir: Annotated[Optional[str], Opt(help="folder with train/dev/test .tsv/.csv/.jsonl/.parquet")] = None,
    train_file: Annotated[Optional[str], Opt()] = None,
    dev_file: Annotated[Optional[str], Opt()] = None,
    test_file: Annotated[Optional[str], Opt()] = None,
    columns: Annotated[Optional[list[str]], Opt("--column", help="FIELD=COLUMN, repeatable")] = None,
    max_length: Annotated[Optional[int], Opt()] = None,
    max_train: Annotated[Optional[int], Opt(help="seeded subset of the training set (0 = all)")] = None,
    metric: Annotated[
        Optional[str], Opt(help="score to select on: accuracy | f1 | f1_acc | mcc (default: the task's)")
    ] = None,
    method: Annotated[
        Optional[str], Opt(help="probe | deep | late | spt (SPT-DARTS gates) | dp (dynamic prompting)")
    ] = None,
    layers: Annotated[Optional[str], Opt(help="deep: block indices '0,3,5', 'all', 'lower-half', 'upper-half'")] = None,
    length: Annotated[Optional[int], Opt(help="prompt length L")] = None,
    position: Annotated[Optional[str], Opt(help="deep: prefix | split")] = None,
    split: Annotated[Optional[int], Opt(help="deep, position=split: P[j:] + input + P[:j]")] = None,
    reparam: Annotated[Optional[int], Opt(help="deep: MLP reparametrisation width (0 = off)")] = None,
    form: Annotated[
        Optional[str], Opt(help="deep: hidden (prompt tokens) | kv (key/value prefixes: P-tuning v2, prefix tuning)")
    ] = None,
    layer: Annotated[Optional[int], Opt(help="late: insertion layer k")] = None,
    generator: Annotated[Optional[str], Opt(help="late: npg | appg | mppg")] = None,
    bottleneck: Annotated[Optional[int], Opt(help="late: generator bottleneck r")] = None,
    method_options: Annotated[
        Optional[list[str]],
        Opt("--method-option", help="KEY=VALUE for any method field, repeatable (e.g. budget=3, choose=[position])"),
    ] = None,
    head: Annotated[Optional[str], Opt(help="classifier | label_words")] = None,
    pooling: Annotated[
        Optional[str],
        Opt(
            help="classifier input: token (first; decoders: last real) | mean (of the text) | first (an input prompt's first slot, as peft)"
        ),
    ] = None,
    label_words: Annotated[Optional[str], Opt(help="comma-separated, one per class")] = None,
    steps: Annotated[Optional[int], Opt("--steps", "--max-steps")] = None,
    epochs: Annotated[Optional[float], Opt(help="instead of --steps: passes over the training set")] = None,
    lr: Annotated[Optional[float], Opt("--lr", "--learning-rate")] = None,
    weight_decay: Annotated[Optional[float], Opt()] = None,
    warmup_ratio: Annotated[Optional[float], Opt()] = None,
    batch_size: Annotated[Optional[int], Opt()] = None,
    eval_every: Annotated[Optional[int], Opt()] = None,
    seed: Annotated[Optional[int], Opt()] = None,
    device: Annotated[Optional[str], Opt(help="auto | cpu | cuda | cuda:N")] = None,
    precision: Annotated[Optional[str], Opt(help="auto | fp32 | bf16")] = None,
    prefix_cache: Annotated[
        Optional[bool], Opt("--prefix-cache/--no-prefix-cache", help="reuse frozen-block outputs (default on)")
    ] = None,
    output: Annotated[str, Opt("--output", "--output-dir", help="run directory to write")] = "runs/train",
    overwrite: Annotated[bool, Opt(help="replace an existing run directory")] = False,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="no line per evaluation")] = False,
) -> None:
    """Train and evaluate one prompt configuration; saves safetensors weights and config.json."""
    values = {k: v for k, v in locals().items() if k not in ("output", "overwrite", "config", "quiet")}
    from autoprompt_search import train as train_run

    values["config_file"] = config
    values["columns"] = values["columns"] or []
    values["method_options"] = values["method_options"] or []
    progress = None if quiet else (lambda line: typer.echo(line, err=True))
    try:
        result = train_run(output, overwrite, progress, **values)
    except ConfigError as exc:
        fail(exc)
    except KeyboardInterrupt:
        typer.echo(f"interrupted: nothing was saved ({output} is written only when a run ends)", err=True)
        raise typer.Exit(130) from None
    m = result.metrics
    typer.echo(
        json.dumps(
            {k: m[k] for k in ("dev", "test", "trainable_params", "steps_per_s", "collapsed") if k in m}, indent=2
        )
    )
    if "spt_search" in m:
        from autoprompt_search.darts import describe_search

        typer.echo(describe_search(m["spt_search"]), err=True)
    if result.status == "COLLAPSED":
        typer.echo(f"warning: {result.error}", err=True)
    typer.echo(f"saved to {output}")


@app.command()
def predict(
    run_dir: Annotated[str, typer.Argument(help="directory written by `autoprompt train` or `export`")],
    text: Annotated[Optional[list[str]], Opt("--text", help="label this text (repeatable)")] = None,
    input_file: Annotated[str, Opt("--input", help="label the texts of a tsv/csv/jsonl/parquet file")] = "",
    column: Annotated[
        Optional[list[str]], Opt("--column", help="--input's text column (twice for a pair task)")
    ] = None,
    split: Annotated[str, Opt(help="without --text/--input: score this split (train | dev | test)")] = "dev",
    data_dir: Annotated[str, Opt(help="score the split from this folder instead of the run's data")] = "",
    device: Annotated[str, Opt()] = "auto",
    output: Annotated[str, Opt(help="write predictions as JSON lines")] = "",
) -> None:
    """Label new texts (--text, --input: label and class probabilities, JSON lines), or reload a
    trained run and score a split of its data."""
    from autoprompt_search.runs import label_texts, predict_to_file, read_run, read_texts

    try:
        if text or input_file:
            task = read_run(run_dir)["config"]["data"]["task"]
            texts = list(text or []) + (read_texts(input_file, column or [], task) if input_file else [])
            lines = "".join(json.dumps(r) + "\n" for r in label_texts(run_dir, texts, device))
            if output:
                Path(output).write_text(lines, encoding="utf-8")
            else:
                typer.echo(lines, nl=False)
            return
        metrics = predict_to_file(run_dir, split, device, output, data_dir or None)
    except ConfigError as exc:
        fail(exc)
    typer.echo(json.dumps(metrics, indent=2))


@app.command()
def space(
    path: Annotated[str, typer.Argument(help="search-space YAML, or a shipped one: all, layers, lpt, learned, ...")],
    model: Annotated[str, Opt(help="model whose depth resolves layer fractions")] = "minilm-l6",
    samples: Annotated[int, Opt(help="random configurations to print")] = 5,
    seed: Annotated[int, Opt()] = 0,
) -> None:
    """Validate a search space (every problem at once) and print sample configurations."""
    import yaml

    from autoprompt_search.runs import num_layers_of
    from autoprompt_search.search_space import preview

    try:
        drawn = preview(path, num_layers_of(model), samples, seed)
    except ConfigError as exc:
        fail(exc)
    typer.echo(yaml.safe_dump(drawn, sort_keys=False))


@app.command()
def search(
    ctx: typer.Context,
    space: Annotated[str, Opt(help="search-space YAML, or a shipped one: all | layers | lpt")] = "all",
    name: Annotated[str, Opt(help="study name: results go to RESULTS_DIR/NAME")] = "default",
    resume: Annotated[
        str, Opt(help="continue the interrupted study of this name (its stored options hold; changing one is an error)")
    ] = "",
    num_samples: Annotated[
        Optional[int], Opt(help="trials in the study (default 6; with --budget: as many as it holds)")
    ] = None,
    budget: Annotated[
        str, Opt(help="the search's compute instead of a trial count: 4runs (x --steps) or 20000steps")
    ] = "",
    portfolio: Annotated[
        bool,
        Opt("--portfolio/--no-portfolio", help="try configurations learnt on other tasks first (never this task's)"),
    ] = True,
    max_concurrent: Annotated[int, Opt(help="Train jobs running at once (each a trial, or a fused group)")] = 2,
    fuse: Annotated[
        int, Opt(help="trials trained together in one Train job over one backbone (1 = one trial per job)")
    ] = 1,
    objective: Annotated[
        Optional[list[str]], Opt(help="METRIC:max|min, repeatable; several = multi-objective (NSGA-II)")
    ] = None,
    finalists: Annotated[
        int, Opt(help="after the search, retrain its top K configurations over --seeds fresh seeds (0 = none)")
    ] = 3,
    seeds: Annotated[int, Opt(help="seeds per finalist; the study's best is the best median")] = 3,
    max_trainable: Annotated[
        str,
        Opt(
            help="trainable-parameter budget per trial: a count (150000) or a share of the model (0.5%); "
            "draws over it are never trained"
        ),
    ] = "",
    enqueue: Annotated[
        Optional[list[str]], Opt(help="a config (exported config.yaml, or method/train) to try first; repeatable")
    ] = None,
    warm_start: Annotated[
        str, Opt(help="a study (name under --results-dir, or directory) whose finished trials the sampler learns from")
    ] = "",
    sampler: Annotated[str, Opt(help="auto | tpe | nsga2 | random")] = "auto",
    startup_trials: Annotated[
        int, Opt(help="TPE: random trials before it models results (0 = 10, or a quarter of a smaller study)")
    ] = 0,
    scheduler: Annotated[str, Opt(help="asha (early stopping, one objective) | fifo")] = "asha",
    grace_period: Annotated[int, Opt(help="ASHA: evaluations before a trial may be stopped")] = 1,
    cpus_per_worker: Annotated[
        float,
        Opt(help="CPUs per Train worker (a trial has --workers-per-trial of them, so per trial: this x workers)"),
    ] = 1.0,
    gpus_per_worker: Annotated[
        float, Opt(help="GPUs per Train worker (per trial: this x --workers-per-trial); 0.25 packs 4 workers on a GPU")
    ] = 0.0,
    workers_per_trial: Annotated[int, Opt(help="Ray Train workers (DDP ranks) per trial")] = 1,
    max_failures: Annotated[
        int, Opt(help="restarts of a trial's Train run after a worker crash (from its last checkpoint)")
    ] = 2,
    search_seed: Annotated[int, Opt(help="sampler seed")] = 0,
    address: Annotated[
        Optional[str], Opt(help="join this Ray cluster (e.g. 127.0.0.1:6379) instead of starting one")
    ] = None,
    num_cpus: Annotated[Optional[int], Opt(help="local mode: CPUs Ray may use (default: all)")] = None,
    dashboard_port: Annotated[int, Opt(help="local mode: dashboard port on 127.0.0.1")] = 8265,
    dashboard_host: Annotated[
        str, Opt(help="local mode: expose the dashboard on this address (risky: it runs code for anyone)")
    ] = "127.0.0.1",
    results_dir: Annotated[str, Opt(help="where study directories live")] = "results",
    overwrite: Annotated[bool, Opt(help="replace an existing study of the same name")] = False,
    config: Annotated[str, Opt("--config", help="base experiment YAML/JSON (model, data, head, recipe)")] = "",
    model: Annotated[Optional[str], Opt(help="packaged name, model directory or hub id")] = None,
    task: Annotated[Optional[str], Opt(help="registered task (trec, sst2, rte, ...)")] = None,
    source: Annotated[Optional[str], Opt(help="auto | files | hub | package")] = None,
    data_dir: Annotated[Optional[str], Opt(help="folder with train/dev/test files")] = None,
    columns: Annotated[Optional[list[str]], Opt("--column", help="FIELD=COLUMN, repeatable")] = None,
    max_length: Annotated[Optional[int], Opt()] = None,
    max_train: Annotated[Optional[int], Opt(help="seeded subset of the training set (0 = all)")] = None,
    metric: Annotated[
        Optional[str], Opt(help="score to select on: accuracy | f1 | f1_acc | mcc (default: the task's)")
    ] = None,
    steps: Annotated[
        Optional[int], Opt("--steps", "--max-steps", help="training steps per trial, unless the space searches them")
    ] = None,
    batch_size: Annotated[Optional[int], Opt()] = None,
    eval_every: Annotated[Optional[int], Opt()] = None,
    seed: Annotated[Optional[int], Opt(help="training seed of every trial")] = None,
    precision: Annotated[Optional[str], Opt(help="auto | fp32 | bf16")] = None,
    prefix_cache: Annotated[
        Optional[bool], Opt("--prefix-cache/--no-prefix-cache", help="reuse frozen-block outputs (default on)")
    ] = None,
) -> None:
    """Run a search study on Ray: Optuna proposes configurations, each trial is a Ray Train run."""
    from autoprompt_search import resume as resume_study
    from autoprompt_search import search as search_study

    def announce(cluster, study_dir) -> None:  # type: ignore[no-untyped-def]
        where = f"joined {cluster.address}" if cluster.address != "local" else "started a local Ray"
        typer.echo(f"ray: {where} ({cluster.cpus:g} CPUs, {cluster.gpus:g} GPUs)", err=True)
        if cluster.dashboard_url:
            typer.echo(f"dashboard: {cluster.dashboard_url}", err=True)
        typer.echo(f"results: {study_dir}/trials.parquet (autoprompt status {study_dir})", err=True)
        typer.echo(f"tensorboard: tensorboard --logdir {study_dir}/tune", err=True)

    from autoprompt_search.study.cluster import RaySettings, exposure_warning

    warning = exposure_warning(dashboard_host)
    if warning:
        typer.echo(warning, err=True)
    ray_settings = RaySettings(
        address=address, num_cpus=num_cpus, dashboard_port=dashboard_port, dashboard_host=dashboard_host
    )
    connect = {"ray_settings": ray_settings, "on_connect": announce}
    try:
        if resume:
            run = resume_study(resume, results_dir=results_dir, **connect, given=_given_flags(ctx, RESUME_FLAGS))
        else:
            run = search_study(
                space, name=name, results_dir=results_dir, overwrite=overwrite, search_seed=search_seed, **connect,
                # the study's knobs
                num_samples=num_samples if num_samples is not None or budget else 6, budget=budget,
                portfolio=portfolio, max_concurrent=max_concurrent, fuse=fuse,
                objectives=objective or ["dev_score:max"], finalists=finalists, seeds=seeds, sampler=sampler,
                startup_trials=startup_trials, enqueue=enqueue or [], warm_start=warm_start,
                max_trainable=max_trainable,
                scheduler=scheduler, grace_period=grace_period, cpus_per_worker=cpus_per_worker,
                gpus_per_worker=gpus_per_worker, workers_per_trial=workers_per_trial, max_failures=max_failures,
                # the base experiment (flags over --config over the embedded default)
                config_file=config, model=model, task=task, source=source, data_dir=data_dir, columns=columns or [],
                max_length=max_length, max_train=max_train, metric=metric, steps=steps, batch_size=batch_size,
                eval_every=eval_every, seed=seed, precision=precision, prefix_cache=prefix_cache,
            )  # fmt: skip
    except ConfigError as exc:
        fail(exc)
    _print_status(run.study_dir)
    if run.finished_before:
        typer.echo(
            f"nothing left to run: the study had finished; export with: autoprompt export {run.study_dir} --top 3"
        )
    elif run.interrupted:
        typer.echo(f"interrupted: continue with autoprompt search --resume {run.study_dir}", err=True)
        raise typer.Exit(130)  # the shell's code for Ctrl-C
    else:
        typer.echo(f"study wall time {run.wall_seconds:.1f} s; export with: autoprompt export {run.study_dir} --top 3")


# What --resume may take: where the study is and how to reach Ray; the rest is the stored study's.
RESUME_FLAGS = {"resume", "results_dir", "address", "num_cpus", "dashboard_port", "dashboard_host"}


def _given_flags(ctx: typer.Context, allowed: set[str]) -> dict[str, object]:
    """Parameters the user typed on the command line, other than `allowed` ones."""

    def typed(name: str) -> bool:  # by name: typer may bring its own copy of click's enum
        source = ctx.get_parameter_source(name)
        return source is not None and source.name == "COMMANDLINE"

    return {name: value for name, value in ctx.params.items() if name not in allowed and typed(name)}


def _print_status(study_dir) -> None:  # type: ignore[no-untyped-def]
    from rich.console import Console
    from rich.table import Table

    from autoprompt_search.study.options import StudyOptions
    from autoprompt_search.study.ranking import stopped_note, summarize
    from autoprompt_search.study.records import optuna_numbers, study_rows

    options = StudyOptions.load(study_dir)
    rows = study_rows(study_dir)
    summary = summarize(rows, options.parsed_objectives)
    finalist_text = f", {summary['finalist_runs']} finalist runs" if summary["finalist_runs"] else ""
    budget_text = f", at most {options.max_trainable} trainable" if options.max_trainable else ""
    if options.budget:
        spent = sum(int(r["last_step"] or 0) for r in rows if not r["finalist_of"])
        budget_text += f", {spent:,} of {options.budget_steps:,} search steps ({options.budget})"
    table = Table(
        title=f"study {options.name}: {summary['trials']} trials{finalist_text}{budget_text} {summary['counts']}"
    )
    numbers = optuna_numbers(study_dir, options.name)
    for column in (
        "#",
        "trial",
        "optuna #",
        "status",
        "method",
        "seed",
        "dev_score",
        "test",
        "params",
        "evals",
        "collapsed",
        "wall s",
        "error",
    ):
        table.add_column(column)
    for r in rows:
        table.add_row(
            str(r["number"]),
            r["trial_id"],
            str(numbers.get(r["trial_id"], "-")),
            r["status"],
            r["method"] or "-",
            "-" if r.get("seed") is None else str(r["seed"]),
            _number(r["dev_score"]),
            _number(r.get("test_score")),
            str(r["trainable_params"] or "-"),
            str(r["evaluations"] or 0),
            str(r.get("collapsed_evals") or 0),
            _number(r["wall_seconds"], "{:.0f}"),
            (r["error"] or "")[:60],
        )
    console = Console() if sys.stdout.isatty() else Console(width=180)
    console.print(table)
    note = stopped_note(rows, options)
    if note:
        console.print(note)
    metric = summary["objective"].split(":")[0]
    if summary["finalists"]:
        finals = Table(title="finalists: median over seeds (range); a failed or collapsed seed counts as the worst")
        for column in ("of trial", "method", "seeds", f"{metric} median", "range", "test median", "range"):
            finals.add_column(column)
        for g in summary["finalists"]:
            finals.add_row(
                g["finalist_of"],
                g["method"] or "-",
                f"{g['scored']}/{g['seeds']}",
                _number(g[metric]),
                _range(g[metric + "_min"], g[metric + "_max"]),
                _number(g["test_median"]),
                _range(g["test_min"], g["test_max"]),
            )
        console.print(finals)
    best = summary["best"]
    if best is not None and best.get("finalist_of"):
        source = next(r for r in rows if r["trial_id"] == best["finalist_of"])
        console.print(
            f"best {summary['objective']}: median {_number(best[metric])} over {best['scored']}/{best['seeds']} seeds "
            f"(range {_range(best[metric + '_min'], best[metric + '_max'])}), the configuration of trial "
            f"{best['finalist_of']}: {source['config']}"
        )
    elif best is not None:
        console.print(f"best {summary['objective']}: trial {best['trial_id']} {best['config']}")


def _number(value: float | None, fmt: str = "{:.4f}") -> str:
    return "-" if value is None else fmt.format(value)


def _range(low: float | None, high: float | None) -> str:
    return "-" if low is None else f"{low:.4f}-{high:.4f}"


@app.command()
def compare(
    name: Annotated[str, Opt(help="results/compare/<name>")] = "compare",
    space: Annotated[str, Opt(help="discrete search space: shipped name (all, layers, lpt, learned) or YAML")] = "all",
    search_trials: Annotated[int, Opt(help="discrete-search trials; also sets SPT-DARTS' matched budget")] = 4,
    seeds: Annotated[int, Opt(help="seeds per arm's final runs: 1..N (>= 3 for medians), as search's --seeds")] = 3,
    arms: Annotated[
        Optional[list[str]],
        Opt(
            "--arm",
            help="run only these arms (repeatable): probe, prompt-tuning, deep-all, lpt-half, dp, "
            "spt-darts, discrete-search",
        ),
    ] = None,
    spt_options: Annotated[Optional[list[str]], Opt("--spt-option", help="KEY=VALUE for the SPT gate search")] = None,
    dp_options: Annotated[Optional[list[str]], Opt("--dp-option", help="KEY=VALUE for dynamic prompting")] = None,
    max_concurrent: Annotated[int, Opt(help="discrete-search trials at once")] = 2,
    scheduler: Annotated[str, Opt(help="discrete search: asha | fifo")] = "asha",
    search_seed: Annotated[int, Opt(help="sampler seed of the discrete search")] = 0,
    address: Annotated[Optional[str], Opt(help="run the discrete search on this Ray cluster")] = None,
    num_cpus: Annotated[Optional[int], Opt(help="local mode: CPUs Ray may use")] = None,
    results_dir: Annotated[str, Opt(help="where comparisons live")] = "results/compare",
    overwrite: Annotated[bool, Opt(help="replace an existing comparison of the same name")] = False,
    config: Annotated[str, Opt("--config", help="base experiment YAML/JSON (model, data, head, recipe)")] = "",
    model: Annotated[Optional[str], Opt(help="packaged name, model directory or hub id")] = None,
    task: Annotated[Optional[str], Opt(help="registered task (sst2, rte, trec, ...)")] = None,
    source: Annotated[Optional[str], Opt(help="auto | files | hub | package")] = None,
    data_dir: Annotated[Optional[str], Opt(help="folder with train/dev/test files")] = None,
    max_length: Annotated[Optional[int], Opt()] = None,
    max_train: Annotated[Optional[int], Opt(help="seeded subset of the training set (0 = all)")] = None,
    steps: Annotated[
        Optional[int], Opt("--steps", "--max-steps", help="training steps of every run and search trial")
    ] = None,
    batch_size: Annotated[Optional[int], Opt()] = None,
    eval_every: Annotated[Optional[int], Opt()] = None,
    device: Annotated[Optional[str], Opt(help="auto | cpu | cuda (final runs and the gate search)")] = None,
    precision: Annotated[Optional[str], Opt(help="auto | fp32 | bf16")] = None,
    prefix_cache: Annotated[
        Optional[bool], Opt("--prefix-cache/--no-prefix-cache", help="reuse frozen-block outputs (default on)")
    ] = None,
) -> None:
    """Compare discrete search, SPT-DARTS, dynamic prompting and fixed baselines on one task and model."""
    from autoprompt_search.compare.runner import make_compare_options, run_compare
    from autoprompt_search.runs import TrainOptions
    from autoprompt_search.study.cluster import RaySettings

    seed_list = tuple(range(1, seeds + 1))  # a count, as `search --seeds`
    base = TrainOptions(
        config_file=config, model=model, task=task, source=source, data_dir=data_dir, max_length=max_length,
        max_train=max_train, steps=steps, batch_size=batch_size, eval_every=eval_every, device=device,
        precision=precision, prefix_cache=prefix_cache,
    )  # fmt: skip
    try:
        options = make_compare_options(
            space, base, spt_options or [], dp_options or [], name=name, search_trials=search_trials,
            seeds=seed_list, arms=tuple(arms or ()), max_concurrent=max_concurrent, scheduler=scheduler,
            search_seed=search_seed,
        )  # fmt: skip
        out = run_compare(
            options, results_dir, overwrite, RaySettings(address=address, num_cpus=num_cpus),
            log=lambda line: typer.echo(line, err=True),
        )  # fmt: skip
    except ConfigError as exc:
        fail(exc)
    typer.echo((out / "report.md").read_text(encoding="utf-8"))
    typer.echo(f"written to {out}", err=True)


@app.command()
def status(
    study: Annotated[str, typer.Argument(help="study directory, or a study name under --results-dir")],
    results_dir: Annotated[str, Opt(help="where study directories live (for a study given by name)")] = "results",
) -> None:
    """Show a study's trials: best so far, running, stopped, failed; finalists' medians."""
    try:
        _print_status(_study_dir(study, results_dir))
    except ConfigError as exc:
        fail(exc)


@app.command()
def export(
    study: Annotated[str, typer.Argument(help="study directory, or a study name under --results-dir")],
    top: Annotated[int, Opt(help="export the k best: finalists by their median over seeds, else trials")] = 1,
    pareto: Annotated[bool, Opt(help="export the Pareto front over all objectives instead")] = False,
    output: Annotated[str, Opt("--output", "--output-dir", help="directory to write (default: STUDY/export)")] = "",
    overwrite: Annotated[bool, Opt()] = False,
    results_dir: Annotated[str, Opt(help="where study directories live (for a study given by name)")] = "results",
    form: Annotated[
        str, Opt("--format", help="native | peft (also an adapter PeftModel.from_pretrained loads)")
    ] = "native",
) -> None:
    """Export chosen trials as run directories: config.yaml (retrain) + safetensors weights (serve)."""
    from autoprompt_search.peft_format import loading_code
    from autoprompt_search.study.export import export_study

    try:
        runs = export_study(_study_dir(study, results_dir), output or None, top, pareto, overwrite, form)
    except ConfigError as exc:
        fail(exc)
    if not pareto and len(runs) < top:
        typer.echo(f"export: --top {top} asked, the study has {len(runs)} configurations to export: wrote {len(runs)}")
    for run in runs:
        typer.echo(f"{run}  (autoprompt predict {run} | autoprompt train --config {run}/config.yaml)")
        if form == "peft":
            typer.echo(f"  peft: {loading_code(run)}")


@app.command()
def report(
    study: Annotated[str, typer.Argument(help="study directory, or a study name under --results-dir")],
    output: Annotated[str, Opt("--output", "--output-dir", help="directory to write (default: STUDY/report)")] = "",
    results_dir: Annotated[str, Opt(help="where study directories live (for a study given by name)")] = "results",
) -> None:
    """Write an HTML report of the study (history, importances, layers, methods, finalists, failures)."""
    from autoprompt_search.study.report import write_report

    try:
        page = write_report(_study_dir(study, results_dir), output or None)
    except ConfigError as exc:
        fail(exc)
    typer.echo(str(page))


@app.command()
def dashboard(
    study: Annotated[str, typer.Argument(help="study directory, or a study name under --results-dir")],
    port: Annotated[int, Opt(help="port to listen on")] = 8080,
    host: Annotated[
        str, Opt(help="address to listen on; anything but loopback exposes the study (risky)")
    ] = "127.0.0.1",
    results_dir: Annotated[str, Opt(help="where study directories live (for a study given by name)")] = "results",
) -> None:
    """Serve optuna-dashboard on the study's Optuna journal (history, parameters, importances)."""
    from autoprompt_search.study.dashboard import exposure_warning, journal_of, serve

    try:
        study_dir = _study_dir(study, results_dir)
        journal_of(study_dir)
    except ConfigError as exc:
        fail(exc)
    warning = exposure_warning(host, port)
    if warning:
        typer.echo(warning, err=True)
    typer.echo(f"optuna-dashboard: http://{host}:{port}/ (Ctrl-C stops it)", err=True)
    serve(study_dir, host, port)


def _study_dir(study: str, results_dir: str) -> str:
    from autoprompt_search.study.options import study_path

    return str(study_path(study, results_dir))


def quiet_libraries() -> None:
    """Keep stderr for our one-line errors: no weight-loading bars or load reports."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
