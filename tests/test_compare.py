"""`autoprompt compare` end to end on a tiny model: every arm, a held-out split, the report and plots."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import InterruptAfter
from typer.testing import CliRunner

from autoprompt_search.compare.arms import CompareOptions
from autoprompt_search.compare.report import pareto, read_runs
from autoprompt_search.compare.runner import run_compare
from autoprompt_search.errors import ConfigError
from autoprompt_search.study.records import read_trials
from cli.main import app

SPACE = {
    "methods": {"deep": {"layers": {"type": "layer_set", "depth": [0.0, 1.0], "max_layers": 2}, "length": 2}},
    "train": {"lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}, "steps": 99},
}


def experiment(model: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": model,
        "data": {"task": "sst2", "source": "files", "max_length": 32, **data},
        "train": {"steps": 4, "eval_every": 2, "batch_size": 8, "device": "cpu"},
    }


def small_arms(**kw: Any) -> dict[str, Any]:
    return {"spt": {"length": 2, "bottleneck": 8, "top_k": 2}, "dp": {"length": 3, "pool": 2}, **kw}


def test_compare_without_a_test_split_holds_dev_out(tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path) -> None:
    data = tmp_path / "rte-like"
    data.mkdir()
    for split in ("train", "dev"):  # like RTE: no labelled test
        shutil.copy(Path(tiny_sst_dir) / f"{split}.tsv", data / f"{split}.tsv")
    options = CompareOptions(
        name="c", experiment=experiment(tiny_model_dir, {"data_dir": str(data)}), seeds=(1, 2, 3),
        arms=("probe", "lpt-half", "dp", "spt-darts"), search_trials=2, **small_arms(),
    )  # fmt: skip
    out = run_compare(options, tmp_path / "results", log=lambda _: None)
    rows = read_runs(out)
    finals = [r for r in rows if r["phase"] == "final"]
    assert {(r["arm"], r["seed"]) for r in finals} == {(a, s) for a in options.arms for s in (1, 2, 3)}
    assert all(r["test_score"] is not None and 0 <= r["test_score"] <= 1 for r in finals)
    (gate_row,) = [r for r in rows if r["phase"] == "selection"]
    assert gate_row["arm"] == "spt-darts" and gate_row["passes"] == 2 * 4  # 2 x 4 passes = 4 steps x 2
    assert gate_row["dev_score"] is None and 0 <= gate_row["eval_score"] <= 1  # no checkpoint kept: no best
    spt = [r for r in finals if r["arm"] == "spt-darts"]
    assert all(json.loads(r["method"])["search"] is False for r in spt)
    gates = json.loads((out / "spt_gates.json").read_text())
    assert json.loads(spt[0]["method"])["layers"] == gates["derived"] and len(gates["derived"]) == 2
    report = (out / "report.md").read_text()
    assert "the dev split, held out as test" in report and "% of train" in report
    for name in ("accuracy_vs_params.png", "accuracy_vs_compute.png", "spt_gates.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match="already holds results"):
        run_compare(options, tmp_path / "results", log=lambda _: None)


@pytest.mark.ray
def test_compare_every_arm_with_a_real_study(tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path) -> None:
    import ray

    from autoprompt_search.study.cluster import RaySettings

    options = CompareOptions(
        name="all", experiment=experiment(tiny_model_dir, {"data_dir": tiny_sst_dir}), space=SPACE,
        search_trials=2, seeds=(1, 2, 3), **small_arms(),
    )  # fmt: skip
    out = run_compare(options, tmp_path, ray_settings=RaySettings(num_cpus=2), log=lambda _: None)
    assert not ray.is_initialized()  # the comparison stopped the Ray it started
    rows = read_runs(out)
    search = [r for r in rows if r["arm"] == "discrete-search" and r["phase"] == "selection"]
    assert len(search) == 2 and all(r["passes"] <= 4 for r in search)  # the space's steps: 99 -> 4
    finals = [r for r in rows if r["phase"] == "final"]
    assert {r["arm"] for r in finals} == set(options.selected_arms) and len(finals) == 7 * 3
    best = max((r for r in search if r["dev_score"] is not None), key=lambda r: r["dev_score"])  # not collapsed
    chosen = {json.loads(r["method"])["layers"].__repr__() for r in finals if r["arm"] == "discrete-search"}
    assert chosen == {json.loads(best["method"])["layers"].__repr__()}
    assert (tmp_path / "all" / "search" / "trials.parquet").is_file()


@pytest.mark.ray
def test_compare_stops_when_its_search_is_interrupted(
    tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C inside the discrete search (Tune returns normally): the comparison stops there; no
    arm is chosen from the partial search, no final run or report is written, its Ray is stopped."""
    import ray

    from autoprompt_search.study import runner
    from autoprompt_search.study.cluster import RaySettings

    run_study = runner.run_study
    marker = str(tmp_path / "interrupted")
    monkeypatch.setattr(runner, "run_study", lambda *a, **k: run_study(*a, **k, callbacks=[InterruptAfter(1, marker)]))
    options = CompareOptions(
        name="cut", experiment=experiment(tiny_model_dir, {"data_dir": tiny_sst_dir}), space=SPACE,
        search_trials=3, max_concurrent=1, seeds=(1,), arms=("discrete-search", "probe"), **small_arms(),
    )  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        run_compare(options, tmp_path, ray_settings=RaySettings(num_cpus=2), log=lambda _: None)
    assert Path(marker).exists() and not ray.is_initialized()
    out = tmp_path / "cut"
    assert not (out / "runs.parquet").exists() and not (out / "report.md").exists()
    searched = read_trials(out / "search")
    assert 1 <= len([r for r in searched if r["status"] == "TERMINATED"]) < 3, searched


def test_compare_cli_bad_input_exits_2_and_writes_nothing(
    tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path
) -> None:
    runner = CliRunner()
    base = ["compare", "--model", tiny_model_dir, "--task", "sst2", "--data-dir", tiny_sst_dir,
            "--results-dir", str(tmp_path)]  # fmt: skip
    for extra, message in (
        (["--seeds", "0"], "--seeds: give at least one seed"),
        (["--arm", "lora"], "--arm: 'lora' unknown"),
        (["--spt-option", "gate=hard"], "method.gate"),
        (["--spt-option", "layers=[1, 9]"], "layer 9 out of range"),
        (["--space", "nope"], "neither a file nor a shipped space"),
    ):
        res = runner.invoke(app, [*base, *extra])
        assert res.exit_code == 2 and message in res.stderr, (extra, res.output)
    assert not any(tmp_path.iterdir())


def test_pareto_front() -> None:
    points = [(10.0, 80.0), (100.0, 85.0), (1000.0, 84.0), (5.0, 70.0), (10.0, 79.0)]
    assert pareto(points) == [3, 0, 1]
