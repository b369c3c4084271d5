"""`autoprompt search / status / export` from the command line, joining a `ray start --head` cluster on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from conftest import free_port, peft_and_our_logits
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()
AUTOPROMPT = [sys.executable, "-m", "cli.main"]


def search_args(model: str, data: str, results: Path, space: Path, *extra: str) -> list[str]:
    return [
        "search", "--space", str(space), "--model", model, "--task", "sst2", "--data-dir", data,
        "--max-length", "32", "--steps", "4", "--eval-every", "2", "--batch-size", "8",
        "--results-dir", str(results), "--scheduler", "fifo", *extra,
    ]  # fmt: skip


@pytest.fixture
def small_space(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(
        # A configuration that does not predict one class within 4 tiny steps (a collapsed trial is
        # never exported), with one searched dimension.
        yaml.safe_dump(
            {
                "methods": {"deep": {"layers": [0], "length": 2}},
                "train": {"lr": {"type": "categorical", "choices": [0.3]}},
            }
        )
    )
    return path


def test_bad_space_is_exit_2_before_ray(tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path) -> None:
    space = tmp_path / "bad.yaml"
    space.write_text("methods:\n  deep:\n    length: {type: int, low: 9, high: 2}\n    bogus: 1\n  nope: {}\n")
    res = runner.invoke(app, search_args(tiny_model_dir, tiny_sst_dir, tmp_path / "results", space))
    assert res.exit_code == 2
    assert "3 problem(s)" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()
    res = runner.invoke(app, ["status", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "study.json" in res.stderr


def loopback_env() -> dict[str, str]:
    return {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }


@pytest.fixture
def head_cluster():
    """`ray start --head` on 127.0.0.1 in its own process group; stopped without touching other Rays."""
    port, dashboard = free_port(), free_port()
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--num-gpus=0", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env=loopback_env(),
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        probe = subprocess.run(
            [Path(sys.executable).parent / "ray", "status", f"--address={address}"], capture_output=True,
            env={**loopback_env(), "RAY_AUTH_MODE": "token"},
        )  # fmt: skip
        if probe.returncode == 0:
            break
        time.sleep(2)
    else:
        head.terminate()
        pytest.fail("ray start --head did not come up in 90 s")
    yield address
    head.terminate()
    head.wait(60)


@pytest.mark.ray
def test_search_joins_an_existing_cluster(
    head_cluster: str, tiny_model_dir: str, tiny_sst_dir: str, small_space: Path, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # A GPU asked for where the cluster has none: one line, exit 2, nothing written.
    bad = subprocess.run(
        [*AUTOPROMPT, *search_args(tiny_model_dir, tiny_sst_dir, results, small_space, "--address", head_cluster,
                                   "--gpus-per-worker", "0.25")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2, bad.stderr
    assert "has no GPU; use --gpus-per-worker 0" in bad.stderr and not (results / "default").exists()

    done = subprocess.run(
        [*AUTOPROMPT, *search_args(tiny_model_dir, tiny_sst_dir, results, small_space, "--address", head_cluster,
                                   "--num-samples", "2", "--name", "joined", "--finalists", "0")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"joined {head_cluster}" in done.stderr
    study = results / "joined"
    res = runner.invoke(app, ["status", str(study)])
    assert res.exit_code == 0 and "TERMINATED" in res.stdout
    res = runner.invoke(app, ["export", str(study), "--top", "1"])
    assert res.exit_code == 0, res.output
    exported = next(p for p in (study / "export").iterdir() if p.is_dir())
    res = runner.invoke(app, ["predict", str(exported), "--split", "dev", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    summary = json.loads((study / "export" / "exported.json").read_text())
    assert json.loads(res.stdout)["score"] == pytest.approx(summary[0]["dev_score"], abs=1e-6)


@pytest.mark.ray
def test_finalists_retrain_the_top_configurations_over_seeds(
    bert_with_pooler: str, tiny_sst_dir: str, tmp_path: Path
) -> None:
    """`--finalists 2 --seeds 2` on a local Ray: 4 finalist rows, the best is the best median, export
    ranks by it, natively and as peft adapters that give our logits."""
    space = tmp_path / "space.yaml"
    # Configurations that learn within 12 tiny steps, differing in prompt length; the classifier on
    # the first prompt slot through the pooler, as peft's prompt tuning reads it.
    space.write_text(yaml.safe_dump({"methods": {"deep": {"layers": [0], "length": {"type": "categorical", "choices": [2, 3]}}},
                                     "train": {"lr": {"type": "categorical", "choices": [0.3]}},
                                     "head": {"pooling": "first"}}))  # fmt: skip
    results = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [*AUTOPROMPT, *search_args(bert_with_pooler, tiny_sst_dir, results, space, "--num-samples", "4", "--sampler",
                                   "random", "--name", "finals", "--finalists", "2", "--seeds", "2", "--num-cpus", "2",
                                   "--steps", "12", "--eval-every", "4")],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # The finalists phase says each run as it ends, like the search's trials.
    said = [line for line in done.stderr.splitlines() if " finalist of " in line]
    assert [line.split("]")[0] for line in said] == ["[1/4", "[2/4", "[3/4", "[4/4"], done.stderr[-3000:]
    assert "finalists: 4 runs (2 best configurations x 2 fresh seeds at most)" in done.stderr
    from autoprompt_search.study.options import Objective
    from autoprompt_search.study.ranking import summarize_study
    from autoprompt_search.study.records import read_trials

    study = results / "finals"
    rows = read_trials(study)
    searched = [r for r in rows if not r["finalist_of"]]
    finals = [r for r in rows if r["finalist_of"]]
    assert len(searched) == 4 and len(finals) == 4, [(r["trial_id"], r["config"], r["status"]) for r in rows]
    sources = {r["finalist_of"] for r in finals}
    assert len(sources) == 2 and sources <= {r["trial_id"] for r in searched}
    by_id = {r["trial_id"]: r for r in searched}
    assert len({by_id[s]["config"] for s in sources}) == 2  # two distinct configurations
    for source in sources:
        runs = [r for r in finals if r["finalist_of"] == source]
        assert sorted(r["seed"] for r in runs) == [2, 3]  # fresh seeds: the search trained with seed 1
        src = json.loads(by_id[source]["config"])
        assert all(json.loads(r["config"]) == {**src, "train": {**src["train"], "seed": r["seed"]}} for r in runs)
        assert all(r["status"] in ("TERMINATED", "COLLAPSED") and r["last_step"] == 12 for r in runs)
        assert all(
            r["test_score"] is not None for r in runs if r["status"] == "TERMINATED"
        )  # tiny data has a test split
    # The Optuna journal names each trial's table row (what optuna-dashboard shows beside its params).
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = JournalStorage(JournalFileBackend(str(study / "optuna.journal")))
    every = [t.user_attrs for t in optuna.load_study(study_name="finals", storage=journal).trials]
    attrs = [a for a in every if "finalist_of" not in a]
    assert sorted(a["tune_trial_id"] for a in attrs) == sorted(by_id) and {a["method"] for a in attrs} == {"deep"}
    assert all(a["trainable_params"] == by_id[a["tune_trial_id"]]["trainable_params"] for a in attrs)
    assert sorted(a["finalist_of"] for a in every if "finalist_of" in a) == sorted(sources)  # medians told
    medians = {}
    for source in sources:
        scores = sorted(
            r["dev_score"] if r["status"] == "TERMINATED" else -1.0 for r in finals if r["finalist_of"] == source
        )
        medians[source] = sum(scores) / 2  # the median of two
    best = summarize_study(rows, [Objective("dev_score", "max")])["best"]
    expected = max(sorted(sources), key=lambda s: medians[s])
    assert best["finalist_of"] == expected
    res = runner.invoke(app, ["status", str(study)])
    assert (
        res.exit_code == 0
        and "finalists: median over seeds" in res.stdout
        and "the configuration of trial" in res.stdout
    )
    # Optuna's trial number beside Tune's id, and the objective named for optuna-dashboard.
    from autoprompt_search.study.records import optuna_numbers

    numbers = optuna_numbers(study, "finals")
    assert sorted(numbers) == sorted(by_id) and "optuna #" in res.stdout
    assert optuna.load_study(study_name="finals", storage=journal).metric_names == ["dev_score"]
    # Both finalist configurations as peft adapters; the best loads in PeftModel with our logits.
    res = runner.invoke(
        app, ["export", str(study), "--format", "peft", "--top", "2", "--output", str(tmp_path / "peft")]
    )
    assert res.exit_code == 0, res.output
    adapters = sorted(p for p in (tmp_path / "peft").iterdir() if p.is_dir())
    assert len(adapters) == 2 and all((p / "adapter_model.safetensors").is_file() for p in adapters)
    assert json.loads((adapters[0] / "adapter_config.json").read_text())["peft_type"] == "PROMPT_TUNING"
    _, ours, theirs = peft_and_our_logits(adapters[0], bert_with_pooler)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    res = runner.invoke(app, ["export", str(study), "--top", "1"])
    assert res.exit_code == 0, res.output
    (summary,) = json.loads((study / "export" / "exported.json").read_text())
    assert summary["finalist_of"] == expected and summary["seeds"] == 2
    exported = next(p for p in (study / "export").iterdir() if p.is_dir())
    res = runner.invoke(app, ["predict", str(exported), "--split", "dev", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    # One meaning for dev_score in every file: the exported run's own (config.json's); medians apart.
    assert json.loads(res.stdout)["score"] == pytest.approx(summary["dev_score"], abs=1e-6)
    assert "checkpoint_dev_score" not in summary and summary["dev_score_median"] == pytest.approx(best["dev_score"])
    own = json.loads((exported / "config.json").read_text())["metrics"]["dev_score"]
    assert own == pytest.approx(summary["dev_score"], abs=1e-6)
    # --resume of the finished study: its table, nothing run, no Ray started here.
    import ray

    res = runner.invoke(app, ["search", "--resume", str(study)])
    assert res.exit_code == 0 and "nothing left to run: the study had finished" in res.stdout, res.output
    assert "ray:" not in res.output and not ray.is_initialized()
