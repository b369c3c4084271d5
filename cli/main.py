"""`autoprompt`: parse the command line and call the library; nothing else lives here."""

from __future__ import annotations

import json
import sys
from typing import Annotated, NoReturn, Optional

import typer

from autoprompt_search.errors import ConfigError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Search where and how to prompt-tune a frozen transformer."
)

Opt = typer.Option


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
    method: Annotated[Optional[str], Opt(help="probe | deep | late")] = None,
    layers: Annotated[Optional[str], Opt(help="deep: block indices '0,3,5', 'all', 'lower-half', 'upper-half'")] = None,
    length: Annotated[Optional[int], Opt(help="prompt length L")] = None,
    position: Annotated[Optional[str], Opt(help="deep: prefix | split")] = None,
    split: Annotated[Optional[int], Opt(help="deep, position=split: P[j:] + input + P[:j]")] = None,
    reparam: Annotated[Optional[int], Opt(help="deep: MLP reparametrisation width (0 = off)")] = None,
    layer: Annotated[Optional[int], Opt(help="late: insertion layer k")] = None,
    generator: Annotated[Optional[str], Opt(help="late: npg | appg | mppg")] = None,
    bottleneck: Annotated[Optional[int], Opt(help="late: generator bottleneck r")] = None,
    head: Annotated[Optional[str], Opt(help="classifier | label_words")] = None,
    label_words: Annotated[Optional[str], Opt(help="comma-separated, one per class")] = None,
    steps: Annotated[Optional[int], Opt()] = None,
    lr: Annotated[Optional[float], Opt()] = None,
    weight_decay: Annotated[Optional[float], Opt()] = None,
    warmup_ratio: Annotated[Optional[float], Opt()] = None,
    batch_size: Annotated[Optional[int], Opt()] = None,
    eval_every: Annotated[Optional[int], Opt()] = None,
    seed: Annotated[Optional[int], Opt()] = None,
    device: Annotated[Optional[str], Opt(help="auto | cpu | cuda | cuda:N")] = None,
    precision: Annotated[Optional[str], Opt(help="auto | fp32 | bf16")] = None,
    output: Annotated[str, Opt(help="run directory to write")] = "runs/train",
    overwrite: Annotated[bool, Opt(help="replace an existing run directory")] = False,
) -> None:
    """Train and evaluate one prompt configuration; saves safetensors weights and config.json."""
    values = {k: v for k, v in locals().items() if k not in ("output", "overwrite", "config")}
    from autoprompt_search.runs import TrainOptions, experiment_from_options, train_to_directory

    values["config_file"] = config
    values["columns"] = values["columns"] or []
    try:
        cfg = experiment_from_options(TrainOptions(**values))
        result = train_to_directory(cfg, output, overwrite)
    except ConfigError as exc:
        fail(exc)
    m = result.metrics
    typer.echo(
        json.dumps(
            {k: m[k] for k in ("dev", "test", "trainable_params", "steps_per_s", "collapsed") if k in m}, indent=2
        )
    )
    if m["collapsed"]:
        typer.echo("warning: the best checkpoint predicts a single class (collapsed run)", err=True)
    typer.echo(f"saved to {output}")


@app.command()
def predict(
    run_dir: Annotated[str, typer.Argument(help="directory written by `autoprompt train`")],
    split: Annotated[str, Opt(help="train | dev | test")] = "dev",
    device: Annotated[str, Opt()] = "auto",
    output: Annotated[str, Opt(help="write predictions as JSON lines")] = "",
) -> None:
    """Reload a trained run and evaluate it on a split of its data."""
    from autoprompt_search.runs import predict_to_file

    try:
        metrics = predict_to_file(run_dir, split, device, output)
    except ConfigError as exc:
        fail(exc)
    typer.echo(json.dumps(metrics, indent=2))


@app.command()
def space(
    path: Annotated[str, typer.Argument(help="search-space YAML, e.g. search_spaces/layers.yaml")],
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


def quiet_libraries() -> None:
    """Keep stderr for our one-line errors: no weight-loading bars or load reports."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@app.callback()
def _setup() -> None:
    quiet_libraries()


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
