"""The experiment's options as a command line or a keyword argument gives them, declared once.

Each field of `ExperimentOptions` is an option (`option_fields.option`): `autoprompt train`,
`search` and `compare` take it as a flag, `train(...)` and `search(...)` as a keyword, and
`experiment_from_options` lays it over a config file (or the embedded default) at the config path
it names. `None` means: keep the config file's value.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Any

import yaml

from autoprompt_search.config import ExperimentConfig, load_config_file
from autoprompt_search.dataclass_io import to_dict
from autoprompt_search.errors import ConfigError, require
from autoprompt_search.methods import method_config
from autoprompt_search.option_fields import EVERY_RUN_COMMAND, flag_of, option

TRAIN_ONLY = ("train",)
TRAIN_AND_SEARCH = ("train", "search")


@dataclass
class ExperimentOptions:
    """Flat experiment options; `None` keeps the config file's value (or the embedded default's)."""

    config_file: str = option(
        "", "base experiment YAML/JSON (model, data, head, recipe; e.g. an exported config.yaml)", "Experiment",
        names=("--config",),
    )  # fmt: skip
    model: str | None = option(None, "packaged name (minilm-l6), model directory, .gguf file or hub id", "Experiment",
                               commands=(*EVERY_RUN_COMMAND, "space"), config="model")  # fmt: skip
    task: str | None = option(
        None, "registered task: sst2, rte, mrpc, cola, qnli, mnli, qqp, trec, superglue-*", "Data", config="data.task"
    )
    source: str | None = option(None, "auto | files | hub | package", "Data", config="data.source")
    data_dir: str | None = option(None, "folder with train/dev/test .tsv/.csv/.jsonl/.parquet", "Data",
                                  config="data.data_dir")  # fmt: skip
    train_file: str | None = option(None, "the training file (instead of --data-dir)", "Data",
                                    commands=TRAIN_ONLY, config="data.train_file")  # fmt: skip
    dev_file: str | None = option(None, "the dev file", "Data", commands=TRAIN_ONLY, config="data.dev_file")
    test_file: str | None = option(None, "the test file", "Data", commands=TRAIN_ONLY, config="data.test_file")
    columns: list[str] | None = option(None, "FIELD=COLUMN, repeatable", "Data", names=("--column",),
                                       commands=TRAIN_AND_SEARCH)  # fmt: skip
    max_length: int | None = option(None, "tokens per text (longer ones are cut)", "Data", config="data.max_length")
    max_train: int | None = option(None, "a seeded subset of the training set (0 = all)", "Data",
                                   config="data.max_train")  # fmt: skip
    metric: str | None = option(None, "the score to select on: accuracy | f1 | f1_acc | mcc (default: the task's)",
                                "Data", commands=TRAIN_AND_SEARCH, config="data.metric")  # fmt: skip
    method: str | None = option(None, "probe | deep | late | spt (SPT-DARTS gates) | dp (dynamic prompting) | lora | kv_lora",
                                "Method", commands=TRAIN_ONLY, config="method.name")  # fmt: skip
    layers: str | None = option(None, "deep, lora: block indices '0,3,5', 'all', 'lower-half', 'upper-half'", "Method",
                                commands=TRAIN_ONLY)  # fmt: skip
    length: int | None = option(None, "prompt length L", "Method", commands=TRAIN_ONLY, config="method.length")
    position: str | None = option(None, "deep: prefix | split", "Method", commands=TRAIN_ONLY,
                                  config="method.position")  # fmt: skip
    split_at: int | None = option(None, "deep, --position split: P[j:] + input + P[:j] at j = this", "Method",
                                  commands=TRAIN_ONLY, config="method.split_at")  # fmt: skip
    reparam: int | None = option(None, "deep: MLP reparametrisation width (0 = off)", "Method", commands=TRAIN_ONLY,
                                 config="method.reparam")  # fmt: skip
    form: str | None = option(None, "deep: hidden (prompt tokens) | kv (key/value prefixes: P-tuning v2)", "Method",
                              commands=TRAIN_ONLY, config="method.form")  # fmt: skip
    layer: int | None = option(None, "late: insertion layer k", "Method", commands=TRAIN_ONLY, config="method.layer")
    generator: str | None = option(None, "late: npg | appg | mppg", "Method", commands=TRAIN_ONLY,
                                   config="method.generator")  # fmt: skip
    bottleneck: int | None = option(None, "late: generator bottleneck r", "Method", commands=TRAIN_ONLY,
                                    config="method.bottleneck")  # fmt: skip
    targets: str | None = option(None, "lora: projections 'query,value' of query, key, value, output, ffn_in, "
                                 "ffn_out, or 'all'", "Method", commands=TRAIN_ONLY, config="method.targets")  # fmt: skip
    rank: int | None = option(None, "lora: rank r", "Method", commands=TRAIN_ONLY, config="method.rank")
    alpha: float | None = option(None, "lora: the update is scaled by alpha / r", "Method", commands=TRAIN_ONLY,
                                 config="method.alpha")  # fmt: skip
    method_options: list[str] | None = option(
        None, "KEY=VALUE for any method field, repeatable (e.g. budget=3, choose=[position])", "Method",
        names=("--method-option",), commands=TRAIN_ONLY,
    )  # fmt: skip
    head: str | None = option(None, "classifier | label_words", "Head", commands=TRAIN_ONLY, config="head.kind")
    pooling: str | None = option(
        None, "classifier input: token (first; decoders: last real) | mean (of the text) | first (an input "
        "prompt's first slot, as peft)", "Head", commands=TRAIN_ONLY, config="head.pooling",
    )  # fmt: skip
    label_words: str | None = option(None, "comma-separated, one per class", "Head", commands=TRAIN_ONLY)
    steps: int | None = option(None, "training steps of a run (a study's trials, unless its space searches them)",
                               "Recipe", names=("--steps", "--max-steps"), config="train.steps")  # fmt: skip
    epochs: float | None = option(None, "instead of --steps: passes over the training set", "Recipe",
                                  commands=TRAIN_ONLY, config="train.epochs")  # fmt: skip
    lr: float | None = option(None, "learning rate", "Recipe", names=("--lr", "--learning-rate"),
                              commands=TRAIN_ONLY, config="train.lr")  # fmt: skip
    weight_decay: float | None = option(None, "AdamW's weight decay (not on biases and norms)", "Recipe",
                                        commands=TRAIN_ONLY, config="train.weight_decay")  # fmt: skip
    warmup_ratio: float | None = option(None, "linear warmup over this share of the steps, then linear decay",
                                        "Recipe", commands=TRAIN_ONLY, config="train.warmup_ratio")  # fmt: skip
    batch_size: int | None = option(None, "examples per step", "Recipe", config="train.batch_size")
    eval_every: int | None = option(None, "steps between dev evaluations (0 = five per run)", "Recipe",
                                    config="train.eval_every")  # fmt: skip
    seed: int | None = option(None, "the training seed (of every trial, in a study)", "Recipe",
                              commands=TRAIN_AND_SEARCH, config="train.seed")  # fmt: skip
    device: str | None = option(None, "auto | cpu | cuda | cuda:N", "Recipe", commands=("train", "compare"),
                                config="train.device")  # fmt: skip
    precision: str | None = option(None, "auto (bf16 autocast on GPU) | fp32 | bf16", "Recipe",
                                   config="train.precision")  # fmt: skip
    prefix_cache: bool | None = option(None, "reuse the frozen blocks' outputs below the first prompted layer",
                                       "Recipe", names=("--prefix-cache/--no-prefix-cache",),
                                       config="train.prefix_cache")  # fmt: skip


def experiment_options(values: dict[str, Any]) -> ExperimentOptions:
    """Keyword arguments as ExperimentOptions; a name that is not an option is a ConfigError."""
    known = {f.name for f in fields(ExperimentOptions)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: not an experiment option; use one of {', '.join(sorted(known))}")
    return ExperimentOptions(**values)


@functools.cache
def embedded_defaults() -> dict[str, Any]:
    """The embedded experiment as a dict, built once (--help reads a default per option)."""
    return ExperimentConfig().to_dict()


def default_shown(config_path: str) -> str:
    """The embedded default of an experiment value (`train.steps` -> '300'), for --help; '' when the
    value depends on the method."""
    if not config_path or config_path.startswith("method."):
        return ""
    value: Any = embedded_defaults()
    for key in config_path.split("."):
        value = value[key]
    return "" if value in ("", None) else str(value)


def parse_layers(spec: str, model: str) -> tuple[int, ...]:
    """'all', 'lower-half'/'upper-half', or a comma list of block indices."""
    spec = spec.strip().lower()
    if spec in ("all", "lower-half", "upper-half"):
        from autoprompt_search.backbones import num_layers_of

        n = num_layers_of(model)
        return {"all": tuple(range(n)), "lower-half": tuple(range(n // 2)), "upper-half": tuple(range(n // 2, n))}[spec]
    try:
        return tuple(int(x) for x in spec.split(",") if x.strip())
    except ValueError as exc:
        raise ConfigError(f"method.layers: {spec!r} is not a list of integers; use e.g. 0,3,5 or all") from exc


def parse_columns(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        require(bool(sep and key and value), f"data.columns: {item!r} is not FIELD=COLUMN; e.g. sentence=text")
        out[key.strip()] = value.strip()
    return out


def parse_method_options(items: list[str]) -> dict[str, Any]:
    """`--method-option budget=2 --method-option choose=[position,length]`: YAML-typed values."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        require(bool(sep and key.strip()), f"method: {item!r} is not KEY=VALUE; e.g. --method-option budget=2")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"method.{key.strip()}: {value!r} is not a valid value ({exc})") from exc
    return out


def experiment_from_options(o: ExperimentOptions) -> ExperimentConfig:
    """Lay the given options over a config file (or the embedded default): each at the config path
    its declaration names; the few that need parsing (layers, columns, label words, method
    options) below."""
    base = load_config_file(o.config_file) if o.config_file else ExperimentConfig()
    d = base.to_dict()
    if o.method is not None and o.method != d["method"]["name"]:
        d["method"] = {"name": o.method}  # a different method starts from its own defaults
    for f in fields(ExperimentOptions):
        flag, value = flag_of(f), getattr(o, f.name)
        if flag is None or not flag.config or value is None:
            continue
        *sections, key = flag.config.split(".")
        target = d
        for section in sections:
            target = target[section]
        target[key] = value
    if o.columns:
        d["data"]["columns"] = parse_columns(o.columns)
    method = d["method"]
    if o.layers is not None:
        method["layers"] = list(parse_layers(o.layers, d["model"]))
    method.update(parse_method_options(o.method_options or []))
    name = method.pop("name")
    d["method"] = {"name": name, **to_dict(method_config(name, method))}
    if o.label_words is not None:
        d["head"]["label_words"] = [w.strip() for w in o.label_words.split(",") if w.strip()]
    return ExperimentConfig.from_dict(d)
