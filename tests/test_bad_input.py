"""Bad input at the command line: one line naming the problem and the fix, exit code 2, nothing written.

Each case runs the real CLI (in-process) against a sandbox holding a tiny model, a dataset, a
valid search space, broken variants of each, and studies in several broken states; the whole
sandbox must be byte-for-byte unchanged afterwards (no half-made study, run or export directory).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from autoprompt_search.config import DataConfig, ExperimentConfig
from autoprompt_search.methods import DeepConfig
from autoprompt_search.study.options import StudyOptions
from autoprompt_search.study.records import SCHEMA, write_trials
from cli.main import app

runner = CliRunner()


@dataclass
class Sandbox:
    root: Path
    model: str
    data: str

    @property
    def results(self) -> str:
        return str(self.root / "results")

    def path(self, name: str) -> str:
        return str(self.root / name)

    def search(self, *extra: str, space: str = "space.yaml", model: str = "", data: str = "") -> list[str]:
        return [
            "search", "--space", self.path(space), "--model", model or self.model, "--task", "sst2",
            "--data-dir", data or self.data, "--max-length", "32", "--steps", "4", "--eval-every", "2",
            "--batch-size", "8", "--results-dir", self.results, "--scheduler", "fifo", *extra,
        ]  # fmt: skip

    def train(self, *extra: str) -> list[str]:
        return [
            "train", "--model", self.model, "--task", "sst2", "--data-dir", self.data, "--max-length", "32",
            "--steps", "2", "--device", "cpu", "--output", self.path("run"), *extra,
        ]  # fmt: skip


SPACES = {
    "space.yaml": "methods:\n  deep: {layers: {type: layer_set, max_layers: 2}, length: 2}\n",
    "syntax.yaml": "methods:\n  deep: {length: [2, 3\n",
    "unknown_key.yaml": "methods:\n  deep: {length: 2, lenght: 3}\n",
    "empty_range.yaml": "methods:\n  deep: {length: {type: int, low: 9, high: 2}}\n",
    "deep_layer.yaml": "methods:\n  late: {layer: 9}\n",
    "orphan.yaml": "methods:\n  deep: {length: 2, generator: npg}\n",
    "unknown_method.yaml": "methods:\n  prefix_tuning: {length: 2}\n",
    "no_methods.yaml": "train: {lr: 0.01}\n",
    "unknown_train.yaml": "methods:\n  deep: {length: 2}\ntrain: {learning_rate: 0.01}\n",
    "bad_type.yaml": "methods:\n  deep: {length: {type: integer, low: 1, high: 4}}\n",
    "empty_choices.yaml": "methods:\n  late: {generator: {type: categorical, choices: []}}\n",
    "negative_length.yaml": "methods:\n  deep: {length: -5}\n",
}


def make_sandbox(root: Path, model_dir: str, sst_dir: str) -> Sandbox:
    box = Sandbox(root, model_dir, sst_dir)
    for name, text in SPACES.items():
        (root / name).write_text(text)
    # A model directory of an architecture transformers does not know.
    (root / "alien").mkdir()
    (root / "alien" / "config.json").write_text(json.dumps({"model_type": "alien-net", "hidden_size": 8}))
    # SST-2 files whose labels are not the task's (0/1) and files without the text column.
    for name, header, label in (("wrong_labels", "sentence\tlabel", "7"), ("no_text", "text\tlabel", "1")):
        (root / name).mkdir()
        for split in ("train", "dev"):
            (root / name / f"{split}.tsv").write_text(f"{header}\na fine film\t{label}\nbad\t{label}\n")
    # SST-2 files with a Latin-1 byte on line 3 of train.tsv.
    (root / "latin1").mkdir()
    (root / "latin1" / "train.tsv").write_bytes("sentence\tlabel\ngood\t1\nun caf\u00e9 froid\t0\n".encode("latin-1"))
    (root / "latin1" / "dev.tsv").write_text("sentence\tlabel\ngood\t1\n")
    # Studies: corrupt study.json, study.json of the wrong shape, one with no trial, one whose trials all failed.
    results = root / "results"
    for name in ("corrupt", "wrong_shape", "no_trials", "all_failed"):
        (results / name).mkdir(parents=True)
    (results / "corrupt" / "study.json").write_text('{"name": "corrupt", "fuse": ')
    (results / "wrong_shape" / "study.json").write_text(json.dumps({"name": "wrong_shape", "num_samples": "many"}))
    for name in ("no_trials", "all_failed"):
        StudyOptions(name=name, space={"methods": {"deep": {}}}).save(results / name)
    failed = {c: None for c in SCHEMA.names} | {"trial_id": "t1", "number": 0, "status": "ERROR", "error": "boom"}
    write_trials(results / "all_failed", [failed])
    # A study whose Tune state (what --resume restores) was cut short.
    (results / "corrupt_tune" / "tune").mkdir(parents=True)
    StudyOptions(name="corrupt_tune", space={"methods": {"deep": {}}}).save(results / "corrupt_tune")
    (results / "corrupt_tune" / "tune" / "tuner.pkl").write_bytes(b"\x80")
    (results / "corrupt_tune" / "tune" / "experiment_state-2026-12-07_09-00-00.json").write_text('{"trial_data": [')
    # A study whose Optuna journal holds garbage (its table and study.json are fine).
    (results / "corrupt_journal").mkdir(parents=True)
    StudyOptions(name="corrupt_journal", space={"methods": {"deep": {}}}).save(results / "corrupt_journal")
    write_trials(results / "corrupt_journal", [failed])
    (results / "corrupt_journal" / "optuna.journal").write_text("garbage{{{\nmore garbage\n")
    # A run directory whose weights are a pickle, not safetensors.
    (root / "pickled_run").mkdir()
    cfg = ExperimentConfig(model=model_dir, data=DataConfig(task="sst2", data_dir=sst_dir), method=DeepConfig())
    (root / "pickled_run" / "config.json").write_text(json.dumps({"config": cfg.to_dict()}))
    torch.save({"w": torch.zeros(1)}, root / "pickled_run" / "prompt.bin")
    # Runs whose weights file or config.json was cut short, and a study whose results table is not parquet.
    (root / "truncated_run").mkdir()
    (root / "truncated_run" / "config.json").write_text(json.dumps({"config": cfg.to_dict()}))
    (root / "truncated_run" / "prompt.safetensors").write_bytes(b'\x40\x00\x00\x00\x00\x00\x00\x00{"w":')
    (root / "corrupt_config_run").mkdir()
    (root / "corrupt_config_run" / "config.json").write_text(json.dumps({"config": cfg.to_dict()})[:40])
    (results / "corrupt_table").mkdir(parents=True)
    StudyOptions(name="corrupt_table", space={"methods": {"deep": {}}}).save(results / "corrupt_table")
    (results / "corrupt_table" / "trials.parquet").write_bytes(b"PAR1 not really")
    # A config file that tries to build a Python object on load.
    (root / "evil.yaml").write_text("!!python/object/apply:os.system ['echo pwned']\n")
    return box


# Each case: its name, its command line, and what its one line must say (the problem and the fix;
# several parts where the line holds something machine-dependent between them).
CASES: list[tuple[str, Callable[[Sandbox], list[str]], str | tuple[str, ...]]] = [
    # search-space files
    ("space: YAML syntax", lambda b: b.search(space="syntax.yaml"), "not valid YAML"),
    ("space: unknown key", lambda b: b.search(space="unknown_key.yaml"), "methods.deep.lenght: not a deep option"),
    ("space: empty range", lambda b: b.search(space="empty_range.yaml"), "empty range low=9 > high=2"),
    ("space: layer beyond the model", lambda b: b.search(space="deep_layer.yaml"), "beyond a 4-layer model"),
    ("space: option without its method", lambda b: b.search(space="orphan.yaml"),
     "methods.deep.generator: not a deep option"),
    ("space: unknown method", lambda b: b.search(space="unknown_method.yaml"), "methods.prefix_tuning: unknown method"),
    ("space: no methods", lambda b: b.search(space="no_methods.yaml"), "methods: needs at least one method"),
    ("space: unknown train option", lambda b: b.search(space="unknown_train.yaml"), "train.learning_rate: unknown"),
    ("space: unknown parameter type", lambda b: b.search(space="bad_type.yaml"), "'integer' unknown"),
    ("space: empty choices", lambda b: b.search(space="empty_choices.yaml"), "choices: needs a non-empty list"),
    ("space: no such file", lambda b: b.search(space="absent.yaml"), "is neither a file nor a shipped space"),
    # model and data
    ("model: path that does not exist", lambda b: b.search(model=b.path("no-model")), "no-model' does not exist"),
    ("model: unknown architecture", lambda b: b.search(model=b.path("alien")),
     "has model type `alien-net` but Transformers does not recognize"),
    ("data: directory that does not exist", lambda b: b.search(data=b.path("no-data")),
     "no-data' is not a directory; give a folder with train/dev files"),
    ("data: missing column", lambda b: b.search(data=b.path("no_text")),
     "no_text/train.tsv lacks sentence (column 'sentence'); its columns are ['label', 'text']: map it with "
     "--column FIELD=COLUMN"),
    ("data: labels not the task's", lambda b: b.search(data=b.path("wrong_labels")),
     "is not a sst2 label; use one of ['negative', 'positive'] or 0..1"),
    ("data: renamed column absent", lambda b: b.search("--column", "sentence=review"),
     "lacks sentence (column 'review'); its columns are ['label', 'sentence']: map it with --column FIELD=COLUMN"),
    ("data: unknown task", lambda b: [*b.search(), "--task", "sst3"], "data.task: 'sst3' unknown"),
    ("data: max length 0", lambda b: [*b.search(), "--max-length", "0"], "data.max_length: must be > 0"),
    # resources and cluster
    ("resources: a GPU where none exists", lambda b: b.search("--gpus-per-worker", "1"),
     "has no GPU (torch sees no CUDA device on this machine); use --gpus-per-worker 0"),
    ("resources: more CPUs than the machine", lambda b: b.search("--cpus-per-worker", "4096"),
     "needs 4096 CPUs but the cluster has"),
    ("cluster: unreachable --address", lambda b: b.search("--address", "127.0.0.1:1"),
     ("--address 127.0.0.1:1: no Ray cluster answers there",
      "start one with `ray start --head --port=1` or drop --address to start a local Ray")),
    # study options
    ("study: name with a path separator", lambda b: b.search("--name", "a/b"), "study: name 'a/b'"),
    ("study: name '..'", lambda b: b.search("--name", ".."), "study: name '..'"),
    ("study: name taken", lambda b: b.search("--name", "no_trials"), "already exists; continue it with --resume"),
    ("study: zero trials", lambda b: b.search("--num-samples", "0"), "study.num_samples: must be >= 1"),
    ("study: fuse 0", lambda b: b.search("--fuse", "0"), "study.fuse: must be >= 1"),
    ("study: negative finalists", lambda b: b.search("--finalists", "-1"), "study.finalists: must be >= 0"),
    ("study: zero seeds", lambda b: b.search("--seeds", "0"), "study.seeds: must be >= 1 seed per finalist"),
    ("status: corrupt trials.parquet", lambda b: ["status", f"{b.results}/corrupt_table"],
     "trials.parquet is not a readable parquet table"),
    ("study: unknown objective", lambda b: b.search("--objective", "accuracy:max"), "'accuracy' is not a reported"),
    ("study: NSGA-II with one objective", lambda b: b.search("--sampler", "nsga2"), "nsga2 is for several objectives"),
    ("study: unknown scheduler", lambda b: b.search("--scheduler", "hyperband"), "study.scheduler: 'hyperband'"),
    ("study: a budget that is not one", lambda b: b.search("--max-trainable", "lots"),
     "study.max_trainable: 'lots' is not a budget; give a parameter count (e.g. 150000) or a share"),
    ("study: a budget nothing in the space fits", lambda b: b.search("--max-trainable", "10"),
     "none of 200 random draws of the space fits 10 trainable parameters (the smallest had 130); raise"),
    ("study: a step budget that is not one", lambda b: b.search("--budget", "4hours"),
     "study.budget: '4hours' is not a step budget; give runs of the base experiment (e.g. 4runs) or training"),
    ("study: a step budget under one run", lambda b: b.search("--budget", "3steps"),
     "study.budget: '3steps' is 3 steps, less than one run of 4; give at least 1run or lower --steps"),
    ("study: a step budget with fused groups", lambda b: b.search("--budget", "2runs", "--fuse", "2"),
     "study.budget: not available with --fuse yet; drop one of them"),
    ("data: a file that is not UTF-8", lambda b: b.search(data=b.path("latin1")),
     "latin1/train.tsv is not UTF-8 (line 3); save it as UTF-8"),
    ("train: a file that is not UTF-8", lambda b: [*b.train(), "--data-dir", b.path("latin1")],
     "latin1/train.tsv is not UTF-8 (line 3)"),
    ("space: a negative prompt length", lambda b: b.search(space="negative_length.yaml"),
     "methods.deep.length: -5 is out of bounds (must be > 0, got -5)"),
    ("train: --config is a directory", lambda b: [*b.train(), "--config", b.path("alien")],
     "is a directory; give a YAML or JSON file"),
    ("train: --output under a regular file", lambda b: b.train("--output", b.path("space.yaml") + "/run"),
     "space.yaml' is a file, not a directory; choose another --output"),
    ("study: --overwrite with data that fails its check keeps the old study",
     lambda b: b.search("--name", "all_failed", "--overwrite", data=b.path("wrong_labels")), "label"),
    ("study: a name over 64 characters", lambda b: b.search("--name", "x" * 300),
     "has 300 characters; use 64 at most"),
    # resume, status, export
    ("resume: no such study", lambda b: ["search", "--resume", "ghost", "--results-dir", b.results],
     "ghost/study.json' not found; give a study directory written by `autoprompt search`"),
    ("resume: corrupt study.json", lambda b: ["search", "--resume", "corrupt", "--results-dir", b.results],
     "corrupt/study.json is not valid JSON (Expecting value); the study directory is corrupt"),
    ("resume: study.json of the wrong shape", lambda b: ["search", "--resume", "wrong_shape", "--results-dir",
                                                          b.results], "study.num_samples: expected int"),
    ("resume: corrupt Tune state", lambda b: ["search", "--resume", "corrupt_tune", "--results-dir", b.results],
     ("experiment_state-2026-12-07_09-00-00.json is not valid JSON; the Tune state is corrupt: start the study "
      "again with --overwrite")),
    ("resume: study that never started", lambda b: ["search", "--resume", "no_trials", "--results-dir", b.results],
     "no Tune state to resume"),
    ("resume: a flag that changes the stored study",
     lambda b: ["search", "--resume", "no_trials", "--results-dir", b.results, "--num-samples", "50", "--steps", "9"],
     "--resume no_trials: --num-samples 50 differs from the study's 6 (and 1 more); a resumed study keeps its options"),
    ("resume: the HF-style --max-steps is --steps",
     lambda b: ["search", "--resume", "no_trials", "--results-dir", b.results, "--max-steps", "9"],
     "--resume no_trials: --steps 9 differs from the study's"),
    ("status: not a study", lambda b: ["status", b.path("alien")], "study.json' not found"),
    ("export: no trial yet", lambda b: ["export", f"{b.results}/no_trials"],
     "has no trials.parquet yet (no trial has started); resume it with autoprompt search --resume"),
    ("dashboard: a study that never ran", lambda b: ["dashboard", f"{b.results}/no_trials"],
     "has no optuna.journal yet; start or resume the study first"),
    ("dashboard: not a study", lambda b: ["dashboard", b.path("alien")], "study.json' not found"),
    ("dashboard: corrupt optuna.journal", lambda b: ["dashboard", f"{b.results}/corrupt_journal"],
     "corrupt_journal/optuna.journal: not a readable Optuna journal; the study directory is corrupt"),
    ("report: corrupt optuna.journal", lambda b: ["report", f"{b.results}/corrupt_journal"],
     "corrupt_journal/optuna.journal: not a readable Optuna journal; the study directory is corrupt"),
    ("report: no trial yet", lambda b: ["report", f"{b.results}/no_trials"],
     "has no trials.parquet yet (no trial has started); resume it with autoprompt search --resume"),
    ("export: no finished trial", lambda b: ["export", f"{b.results}/all_failed"],
     "export: no finished trial with a checkpoint in"),
    ("export: --top 0", lambda b: ["export", f"{b.results}/all_failed", "--top", "0"], "--top must be >= 1, got 0"),
    # train, predict
    ("train: config that builds Python objects", lambda b: ["train", "--config", b.path("evil.yaml"),
                                                           "--output", b.path("run")],
     ("evil.yaml is not valid YAML (could not determine a constructor for the tag",
      "write plain YAML (tags such as !!python/... are never loaded)")),
    ("train: GPU where none exists", lambda b: [*b.train(), "--device", "cuda"], "no GPU is visible here"),
    ("predict: weights that are not safetensors", lambda b: ["predict", b.path("pickled_run")],
     "weights load only from safetensors"),
    ("predict: a model directory, not a run", lambda b: ["predict", b.model], "has no 'config' section"),
    ("predict: a run whose config.json was cut short", lambda b: ["predict", b.path("corrupt_config_run")],
     "corrupt_config_run/config.json is not valid JSON; the run directory is corrupt"),
    ("predict: truncated weights", lambda b: ["predict", b.path("truncated_run")],
     ("prompt.safetensors is not a readable safetensors file", "the file is corrupt: train or export the run again")),
]  # fmt: skip


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: str, tiny_sst_dir: str) -> Sandbox:
    return make_sandbox(tmp_path_factory.mktemp("bad-input"), tiny_model_dir, tiny_sst_dir)


def test_there_are_at_least_25_cases() -> None:
    assert len(CASES) >= 25 and len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("name", "args", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    sandbox: Sandbox, name: str, args: Callable[[Sandbox], list[str]], message: str | tuple[str, ...]
) -> None:
    if "GPU" in name and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    before = snapshot(sandbox.root)
    res = runner.invoke(app, args(sandbox))
    lines = res.stderr.strip().splitlines()
    if os.environ.get("BAD_INPUT_LOG"):  # scripts/reliability.py tabulates each case's line
        shown = res.stderr.strip().replace(str(sandbox.root), "...")
        with open(os.environ["BAD_INPUT_LOG"], "a", encoding="utf-8") as log:
            log.write(json.dumps({"case": name, "exit": res.exit_code, "line": shown}) + "\n")
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    parts = (message,) if isinstance(message, str) else message
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(p in lines[0] for p in parts), res.stderr
    assert snapshot(sandbox.root) == before
    assert not (Path(sandbox.results) / "default").exists()


def test_sandbox_is_valid_when_nothing_is_wrong(sandbox: Sandbox) -> None:
    """The cases fail for their one fault: the same sandbox's good space and data pass `autoprompt space`."""
    res = runner.invoke(app, ["space", sandbox.path("space.yaml"), "--model", sandbox.model, "--samples", "2"])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(Path(sandbox.path("space.yaml")).read_text())["methods"]["deep"]["length"] == 2


@pytest.mark.ray
def test_the_fault_free_search_and_train_commands_succeed(sandbox: Sandbox, tmp_path: Path) -> None:
    """The control: the exact search and train commands the cases break, without a fault, run to the end."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    results = tmp_path / "results"
    args = [
        a if a != sandbox.results else str(results) for a in sandbox.search("--num-samples", "1", "--finalists", "0")
    ]
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *args, "--num-cpus", "2"], capture_output=True, text=True, env=env,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (results / "default" / "trials.parquet").is_file()
    run = tmp_path / "run"
    train = [a if a != sandbox.path("run") else str(run) for a in sandbox.train()]
    res = runner.invoke(app, train)
    assert res.exit_code == 0, res.output
    assert (run / "prompt.safetensors").is_file()
