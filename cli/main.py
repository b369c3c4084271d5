"""`autoprompt`: parse the command line and call the library; nothing else lives here."""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer

from autoprompt_search.compare.arms import CompareOptions
from autoprompt_search.errors import ConfigError
from autoprompt_search.experiment_options import ExperimentOptions
from autoprompt_search.option_fields import declared
from autoprompt_search.study.cluster import RaySettings, ray_settings_from
from autoprompt_search.study.options import StudyOptions

from .declared import declared_options
from .status_table import print_status

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Search where and how to prompt-tune a frozen transformer.",
    context_settings={"help_option_names": ["-h", "--help"]},
)

Opt = typer.Option
EXPERIMENT_FIELDS = {f.name for f in fields(ExperimentOptions)}


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
@declared_options("train", ExperimentOptions)
def train(
    output: Annotated[str, Opt("--output", "--output-dir", help="run directory to write")] = "runs/train",
    overwrite: Annotated[bool, Opt(help="replace an existing run directory")] = False,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="no progress bar and no line per evaluation")] = False,
    **options: Any,
) -> None:
    """Train and evaluate one prompt configuration; saves safetensors weights and config.json."""
    from autoprompt_search import train as train_run

    from .step_bar import StepBar

    # A terminal gets a bar over the steps with each evaluation's line above it; a log, the lines.
    bar = StepBar() if not quiet and sys.stderr.isatty() else None
    progress = None if quiet else bar.line if bar else (lambda line: typer.echo(line, err=True))
    try:
        with bar or contextlib.nullcontext():
            result = train_run(output, overwrite, progress, bar.step if bar else None, **options)
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
        from autoprompt_search.methods.spt_search import describe_search

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
@declared_options("space", StudyOptions, ExperimentOptions)
def space(
    path: Annotated[str, typer.Argument(help="search-space YAML, or a shipped one: all, layers, lpt, learned, ...")],
    samples: Annotated[int, Opt(help="random configurations to print")] = 5,
    **options: Any,
) -> None:
    """Validate a search space (every problem at once) and print sample configurations."""
    import yaml

    from autoprompt_search.backbones import num_layers_of
    from autoprompt_search.config import ExperimentConfig
    from autoprompt_search.study.space import preview

    model = options.get("model") or ExperimentConfig().model  # its depth resolves the layer fractions
    try:
        drawn = preview(path, num_layers_of(model), samples, options.get("search_seed", 0))
    except ConfigError as exc:
        fail(exc)
    typer.echo(yaml.safe_dump(drawn, sort_keys=False))


@app.command()
@declared_options("search", StudyOptions, RaySettings, ExperimentOptions)
def search(
    ctx: typer.Context,
    space: Annotated[str, Opt(help="search-space YAML, or a shipped one: all | layers | lpt | learned")] = "all",
    resume: Annotated[
        str, Opt(help="continue the interrupted study of this name (its stored options hold; changing one is an error)")
    ] = "",
    results_dir: Annotated[str, Opt(help="where study directories live")] = "results",
    overwrite: Annotated[
        bool, Opt(help="replace an existing study of the same name, once the new one has started")
    ] = False,
    **options: Any,
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

    from autoprompt_search.study.cluster import ray_dashboard_warning

    ray_settings = ray_settings_from(options)
    warning = ray_dashboard_warning(ray_settings.dashboard_host)
    if warning:
        typer.echo(warning, err=True)
    connect = {"ray_settings": ray_settings, "on_connect": announce}
    try:
        if resume:
            run = resume_study(resume, results_dir=results_dir, **connect, given=_given_flags(ctx, RESUME_FLAGS))
        else:
            run = search_study(space, results_dir=results_dir, overwrite=overwrite, **connect, **options)
    except ConfigError as exc:
        fail(exc)
    print_status(run.study_dir)
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
RESUME_FLAGS = {"resume", "results_dir", *(f.name for f, _ in declared(RaySettings, "search"))}


def _given_flags(ctx: typer.Context, allowed: set[str]) -> dict[str, object]:
    """Parameters the user typed on the command line, other than `allowed` ones."""

    def typed(name: str) -> bool:  # by name: typer may bring its own copy of click's enum
        source = ctx.get_parameter_source(name)
        return source is not None and source.name == "COMMANDLINE"

    return {name: value for name, value in ctx.params.items() if name not in allowed and typed(name)}


@app.command()
@declared_options("compare", CompareOptions, RaySettings, ExperimentOptions)
def compare(
    space: Annotated[str, Opt(help="discrete search space: shipped name (all, layers, lpt, learned) or YAML")] = "all",
    results_dir: Annotated[str, Opt(help="where comparisons live")] = "results/compare",
    overwrite: Annotated[bool, Opt(help="replace an existing comparison of the same name")] = False,
    **options: Any,
) -> None:
    """Compare discrete search, SPT-DARTS, dynamic prompting and fixed baselines on one task and model."""
    from autoprompt_search.compare.runner import make_compare_options, run_compare

    ray_settings = ray_settings_from(options, "compare")
    base = ExperimentOptions(**{k: options.pop(k) for k in list(options) if k in EXPERIMENT_FIELDS})
    try:
        out = run_compare(
            make_compare_options(space, base, **options), results_dir, overwrite, ray_settings,
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
        print_status(_study_dir(study, results_dir))
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
        str,
        Opt(
            "--format",
            help="native | peft (also an adapter PeftModel.from_pretrained loads) | merged "
            "(also a LoRA run folded into a transformers model in merged/)",
        ),
    ] = "native",
) -> None:
    """Export chosen trials as run directories: config.yaml (retrain) + safetensors weights (serve)."""
    from autoprompt_search.storage.peft_format import loading_code
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
        if form == "merged":
            typer.echo(f"  transformers: AutoModelForSequenceClassification.from_pretrained({str(run / 'merged')!r})")


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
    from autoprompt_search.study.dashboard import journal_of, optuna_dashboard_warning, serve

    try:
        study_dir = _study_dir(study, results_dir)
        journal_of(study_dir)
    except ConfigError as exc:
        fail(exc)
    warning = optuna_dashboard_warning(host, port)
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
