"""The `autoprompt` command: train and predict end to end, exit code 2 on bad input, nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def train_args(model: str, data: str, out: str, *extra: str) -> list[str]:
    return [
        "train", "--model", model, "--task", "sst2", "--data-dir", data, "--max-length", "32",
        "--steps", "4", "--eval-every", "2", "--batch-size", "8", "--device", "cpu", "--output", out, *extra,
    ]  # fmt: skip


def test_train_then_predict_reproduces_metrics(tiny_model_dir: str, tiny_sst_dir: str, tmp_path) -> None:
    out = str(tmp_path / "run")
    res = runner.invoke(app, train_args(tiny_model_dir, tiny_sst_dir, out, "--method", "late", "--layer", "2",
                                        "--length", "3", "--generator", "mppg", "--bottleneck", "8"))  # fmt: skip
    assert res.exit_code == 0, res.output
    progress = [line for line in res.stderr.splitlines() if line.startswith("[step ")]
    assert [line.split("]")[0] for line in progress] == ["[step 2/4", "[step 4/4"], res.stderr  # each evaluation
    assert all(" loss " in line and " dev " in line and " best " in line for line in progress)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["config"]["method"] == {
        "name": "late", "layer": 2, "length": 3, "generator": "mppg", "bottleneck": 8, "dropout": 0.1,
    }  # fmt: skip
    res = runner.invoke(
        app, ["predict", out, "--split", "test", "--device", "cpu", "--output", str(tmp_path / "p.jsonl")]
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout)
    assert metrics == {k: v for k, v in saved["metrics"]["test"].items()}
    lines = (tmp_path / "p.jsonl").read_text().splitlines()
    assert len(lines) == 48 and json.loads(lines[0])["label"] in ("negative", "positive")
    # New texts: --text and --input (the same rows as the split) give the labels the split gets.
    labels = [json.loads(line)["label"] for line in lines]
    test_rows = (Path(tiny_sst_dir) / "test.tsv").read_text().splitlines()[1:]
    texts = [row.split("\t")[0] for row in test_rows]
    (tmp_path / "new.jsonl").write_text("".join(json.dumps({"review": t}) + "\n" for t in texts))
    res = runner.invoke(app, ["predict", out, "--input", str(tmp_path / "new.jsonl"), "--column", "review",
                              "--device", "cpu"])  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["label"] for r in rows] == labels and [r["text"] for r in rows] == texts
    assert set(rows[0]["probabilities"]) == {"negative", "positive"}
    res = runner.invoke(app, ["predict", out, "--text", texts[0], "--text", texts[1], "--device", "cpu"])
    assert [json.loads(line)["label"] for line in res.stdout.splitlines()] == labels[:2]
    # --data-dir: a split of another folder with the same files scores the same.
    res = runner.invoke(app, ["predict", out, "--split", "test", "--device", "cpu", "--data-dir", tiny_sst_dir])
    assert res.exit_code == 0 and json.loads(res.stdout) == metrics
    res = runner.invoke(app, ["predict", out, "--input", str(tmp_path / "new.jsonl"), "--device", "cpu"])
    assert res.exit_code == 2 and "has no column 'sentence' (it has review); name the text column" in res.stderr


def test_train_from_config_file_and_all_layers(tiny_model_dir: str, tiny_sst_dir: str, tmp_path) -> None:
    first = str(tmp_path / "a")
    assert runner.invoke(app, train_args(tiny_model_dir, tiny_sst_dir, first, "--layers", "all")).exit_code == 0
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())["config"]
    assert cfg["method"]["layers"] == [0, 1, 2, 3]
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    res = runner.invoke(app, ["train", "--config", str(tmp_path / "c.json"), "--output", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "b" / "config.json").read_text())
    assert again["metrics"]["dev"] == json.loads((tmp_path / "a" / "config.json").read_text())["metrics"]["dev"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--layers", "0,9"], "method.layers: layer 9 out of range for a 4-layer model; use 0..3"),
        (["--length", "0"], "method.length: must be > 0, got 0"),
        (["--method", "prefix"], "method: 'prefix' unknown; use one of probe, deep, late"),
        (["--method", "late", "--generator", "zzz"], "method.generator: 'zzz' unknown"),
        (["--device", "cuda"], "train.device: cuda requested but no GPU is visible here; use --device cpu"),
        (["--max-length", "0"], "data.max_length: must be > 0, got 0"),
        (["--task", "nope"], "data.task: 'nope' unknown"),
        (["--column", "sentence"], "data.columns: 'sentence' is not FIELD=COLUMN"),
        (["--column", "sentence=text"], "lacks sentence (column 'text')"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    tiny_model_dir: str, tiny_sst_dir: str, tmp_path, extra: list[str], message: str
) -> None:
    import torch

    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = tmp_path / "run"
    res = runner.invoke(app, train_args(tiny_model_dir, tiny_sst_dir, str(out), *extra))
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_unknown_model_and_existing_output(tiny_model_dir: str, tiny_sst_dir: str, tmp_path) -> None:
    res = runner.invoke(app, train_args(str(tmp_path / "no-model"), tiny_sst_dir, str(tmp_path / "r")))
    assert res.exit_code == 2 and "no-model' does not exist" in res.stderr
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "keep.txt").write_text("x")
    res = runner.invoke(app, train_args(tiny_model_dir, tiny_sst_dir, str(tmp_path / "r")))
    assert res.exit_code == 2 and "already holds files; pass --overwrite" in res.stderr
    res = runner.invoke(app, ["predict", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "config.json' not found" in res.stderr


def test_space_command_validates_and_samples(tiny_model_dir: str, tmp_path) -> None:
    import yaml

    space_file = str(Path(__file__).resolve().parents[1] / "search_spaces" / "all.yaml")
    res = runner.invoke(app, ["space", space_file, "--model", tiny_model_dir, "--samples", "3"])
    assert res.exit_code == 0, res.output
    drawn = yaml.safe_load(res.stdout)
    assert len(drawn) == 3 and all(d["method"]["name"] in ("probe", "deep", "late", "lora") for d in drawn)
    (tmp_path / "bad.yaml").write_text("methods: {deep: {length: {type: int, low: 5, high: 1}}, adapter: {}}\n")
    res = runner.invoke(app, ["space", str(tmp_path / "bad.yaml"), "--model", tiny_model_dir])
    assert res.exit_code == 2 and "2 problem(s)" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_train_spt_and_dp_from_the_command_line(tiny_model_dir: str, tiny_sst_dir: str, tmp_path) -> None:
    out = str(tmp_path / "spt")
    options = ["--method-option", "top_k=2", "--method-option", "search_steps=2", "--method-option", "gate=relaxed"]
    res = runner.invoke(app, train_args(tiny_model_dir, tiny_sst_dir, out, "--method", "spt", "--length", "2",
                                        "--bottleneck", "8", "--layers", "1,2,3", *options))  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "retrained layers" in res.stderr
    saved = json.loads((tmp_path / "spt" / "config.json").read_text())
    method = saved["config"]["method"]
    assert method["name"] == "spt" and method["search"] is False and len(method["layers"]) == 2
    assert set(method["layers"]) <= {1, 2, 3} and saved["metrics"]["spt_search"]["derived_layers"] == method["layers"]
    assert runner.invoke(app, ["predict", out, "--device", "cpu"]).exit_code == 0

    dp = ["--method", "dp", "--length", "3", "--method-option", "level=task", "--method-option", "choose=[position, length]",
          "--method-option", "pool=1"]  # fmt: skip
    res = runner.invoke(app, train_args(tiny_model_dir, tiny_sst_dir, str(tmp_path / "dp"), *dp))
    assert res.exit_code == 0, res.output
    method = json.loads((tmp_path / "dp" / "config.json").read_text())["config"]["method"]
    assert method["choose"] == ["position", "length"] and method["level"] == "task"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "dp", "--method-option", "width=3"], "method.width"),
        (["--method", "spt", "--method-option", "budget"], "not KEY=VALUE"),
        (["--method", "spt", "--layers", "1,9"], "layer 9 out of range"),
    ],
)
def test_bad_method_options_exit_2(tiny_model_dir: str, tiny_sst_dir: str, tmp_path, extra, message) -> None:  # type: ignore[no-untyped-def]
    res = runner.invoke(app, train_args(tiny_model_dir, tiny_sst_dir, str(tmp_path / "r"), *extra))
    assert res.exit_code == 2 and message in res.stderr, res.output
    assert not (tmp_path / "r").exists()


def test_hf_style_aliases_and_studies_by_name_under_results_dir(
    tiny_model_dir: str, tiny_sst_dir: str, tmp_path
) -> None:
    out = tmp_path / "run"
    args = [
        "train", "--model", tiny_model_dir, "--task", "sst2", "--data-dir", tiny_sst_dir, "--max-length", "32",
        "--max-steps", "3", "--eval-every", "3", "--learning-rate", "0.02", "--device", "cpu", "--output-dir", str(out),
    ]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    train = json.loads((out / "config.json").read_text())["config"]["train"]
    assert train["steps"] == 3 and train["lr"] == 0.02

    from autoprompt_search.study.options import StudyOptions
    from autoprompt_search.study.records import SCHEMA, write_trials

    study = tmp_path / "elsewhere" / "named"
    study.mkdir(parents=True)
    StudyOptions(name="named", space={"methods": {"deep": {}}}).save(study)
    row = {c: None for c in SCHEMA.names} | {"trial_id": "t1", "number": 0, "status": "TERMINATED", "dev_score": 0.5}
    row |= {"method": "deep", "config": json.dumps({"method": {"name": "deep", "layers": [0]}}), "history": "[]"}
    write_trials(study, [row])
    res = runner.invoke(app, ["status", "named", "--results-dir", str(tmp_path / "elsewhere")])
    assert res.exit_code == 0 and "study named: 1 trials" in res.stdout, res.output
    res = runner.invoke(app, ["status", "named", "--results-dir", str(tmp_path)])
    assert res.exit_code == 2 and "named/study.json' not found" in res.stderr
    res = runner.invoke(app, ["report", "named", "--results-dir", str(tmp_path / "elsewhere")])
    assert res.exit_code == 0 and (study / "report" / "index.html").is_file(), res.output


def test_a_study_is_found_by_name_under_results_dir_first_or_by_path(tmp_path, monkeypatch) -> None:
    from autoprompt_search.errors import ConfigError
    from autoprompt_search.study.options import StudyOptions, study_path
    from autoprompt_search.study.runner import resume_study

    monkeypatch.chdir(tmp_path)
    for where in ("results/named", "named", "elsewhere/named"):
        (tmp_path / where).mkdir(parents=True)
    assert study_path("named", "results") == Path("results/named")  # the name wins over ./named
    assert study_path("named", "nowhere") == Path("named")  # only the current directory holds it
    assert study_path("elsewhere/named", "results") == Path("elsewhere/named")  # a path stays a path
    assert study_path(tmp_path / "named", "results") == tmp_path / "named"
    StudyOptions(name="named", space={"methods": {"deep": {}}}).save(tmp_path / "elsewhere" / "named")
    # --resume with a relative path: that directory, not results/elsewhere/named
    with pytest.raises(ConfigError, match="elsewhere/named' has no Tune state to resume"):
        resume_study("elsewhere/named", "results")


def test_a_collapsed_run_is_saved_with_a_warning(tiny_model_dir: str, tiny_sst_dir: str, tmp_path) -> None:
    """A probe at lr 1000 (no warmup, no clipping) predicts one class at every evaluation: the run
    is saved, and the command says why it has no result worth selecting."""
    config = {
        "model": tiny_model_dir, "method": {"name": "probe"},
        "data": {"task": "sst2", "source": "files", "data_dir": tiny_sst_dir, "max_length": 32},
        "train": {"steps": 4, "eval_every": 2, "batch_size": 8, "device": "cpu", "lr": 1000.0,
                  "warmup_ratio": 0.0, "grad_clip": 0.0},
    }  # fmt: skip
    (tmp_path / "c.json").write_text(json.dumps(config))
    res = runner.invoke(app, ["train", "--config", str(tmp_path / "c.json"), "--output", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.split("saved to")[0])["collapsed"] is True
    assert "warning: collapsed: every evaluation predicted a single class" in res.stderr


def test_version_and_short_help() -> None:
    from importlib.metadata import version

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"autoprompt-search {version('autoprompt-search')}"
    assert runner.invoke(app, ["train", "-h"]).exit_code == 0
