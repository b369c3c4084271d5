"""Search studies: options and selection (no Ray), then real studies on a local Ray (2 CPUs, 1 logical GPU)."""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import InterruptAfter, tiny_experiment

from autoprompt_search.config import load_config_file
from autoprompt_search.errors import ConfigError
from autoprompt_search.methods import method_to_dict
from autoprompt_search.storage.checkpoint import predict_run
from autoprompt_search.study.cluster import ClusterInfo, check_resources
from autoprompt_search.study.export import export_study
from autoprompt_search.study.options import Objective, StudyOptions
from autoprompt_search.study.ranking import (
    best_row,
    choose_finalists,
    finalist_groups,
    pareto_front,
    rank_top,
    summarize_study,
)
from autoprompt_search.study.records import error_line, read_trials
from autoprompt_search.study.runner import resume_study, run_study
from autoprompt_search.study.space import SearchSpaceError, experiment_for
from autoprompt_search.study.trial import TrialPayload, worker_resources

SPACE = {
    "methods": {
        "deep": {"layers": {"type": "layer_set", "depth": [0.0, 1.0], "max_layers": 2}, "length": {"type": "int", "low": 2, "high": 6}},
        "late": {"layer": {"type": "layer", "depth": [0.25, 0.75]}, "length": 2, "bottleneck": 8},
    },
    "train": {"lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}},
}  # fmt: skip


def options(model: str, data: str, **kw: Any) -> StudyOptions:
    defaults: dict[str, Any] = {
        "name": "s", "space": SPACE, "experiment": tiny_experiment(model, data), "num_samples": 4,
        "max_concurrent": 2, "scheduler": "fifo", "finalists": 0,
    }  # fmt: skip
    return StudyOptions(**{**defaults, **kw})


# ---- no Ray --------------------------------------------------------------------------------


def test_objectives_and_options_are_validated() -> None:
    assert str(Objective.parse("trainable_params")) == "trainable_params:min"
    assert str(Objective.parse("dev_score")) == "dev_score:max"
    with pytest.raises(ConfigError, match="not a reported metric"):
        Objective.parse("accuracy:max")
    with pytest.raises(ConfigError, match="nsga2 is for several objectives"):
        StudyOptions(sampler="nsga2")
    with pytest.raises(ConfigError, match="name"):
        StudyOptions(name="../escape")
    with pytest.raises(ConfigError, match="workers-per-trial"):
        StudyOptions(gpus_per_worker=1.5)
    with pytest.raises(ConfigError, match=r"^study.fuse: must be >= 1 \(1 = one trial per Train job\), got 0$"):
        StudyOptions(fuse=0)


def test_relative_paths_are_pinned_for_ray_workers(tiny_model_dir: str, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    opts = StudyOptions(experiment={"model": "minilm-l6", "data": {"data_dir": "data", "train_file": "../t.tsv"}})
    assert opts.experiment["data"] == {"data_dir": str(tmp_path / "data"), "train_file": str(tmp_path.parent / "t.tsv")}
    assert opts.experiment["model"] == "minilm-l6"  # a packaged name, not a path
    rel = os.path.relpath(tiny_model_dir, tmp_path)
    assert StudyOptions(experiment={"model": rel}).experiment["model"] == os.path.normpath(tmp_path / rel)


def test_gpu_requests_are_checked_before_anything_runs() -> None:
    cpu_only = ClusterInfo("local", None, cpus=2, gpus=0, started_here=True)
    with pytest.raises(ConfigError, match="has no GPU.*; use --gpus-per-worker 0"):
        check_resources(StudyOptions(gpus_per_worker=0.25), cpu_only)
    check_resources(StudyOptions(cpus_per_worker=2), cpu_only)
    with pytest.raises(ConfigError, match="needs 3 CPUs"):
        check_resources(StudyOptions(cpus_per_worker=1.5, workers_per_trial=2), cpu_only)
    one_gpu = ClusterInfo("local", None, cpus=2, gpus=1, started_here=True)
    check_resources(StudyOptions(gpus_per_worker=0.25, cpus_per_worker=0.5), one_gpu)
    with pytest.raises(ConfigError, match="needs 2 GPUs"):
        check_resources(StudyOptions(gpus_per_worker=1, workers_per_trial=2, cpus_per_worker=0.5), one_gpu)
    payload = TrialPayload.of(StudyOptions(cpus_per_worker=0.5, gpus_per_worker=0.25), Path("s"))
    assert worker_resources(payload) == {"CPU": 0.49, "GPU": 0.25}  # 0.01 is the Tune trial's
    payload = TrialPayload.of(StudyOptions(workers_per_trial=2), Path("s"))
    assert worker_resources(payload) == {"CPU": 0.995}


def test_sampled_config_applies_over_the_base(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    base = tiny_experiment(tiny_model_dir, tiny_sst_dir)
    cfg = experiment_for(base, {"method": {"name": "late", "layer": 2, "length": 3}, "train": {"lr": 0.02}})
    assert cfg.method.layer == 2 and cfg.train.lr == 0.02 and cfg.train.steps == 6
    assert base["method"] == {"name": "deep"}  # the base is not mutated
    assert cfg.head.pooling == "token"
    pooled = experiment_for(base, {"method": {"name": "probe"}, "train": {}, "head": {"pooling": "mean"}})
    assert pooled.head.pooling == "mean" and pooled.head.pooler == cfg.head.pooler  # drawn over the base's head


def test_finalists_keep_the_drawn_head() -> None:
    from autoprompt_search.study.finalists import finalist_runs

    config = {"method": {"name": "probe"}, "train": {"lr": 0.1}, "head": {"pooling": "mean"}}
    row = {"trial_id": "t", "number": 0, "status": "TERMINATED", "dev_score": 0.9, "config": json.dumps(config)}
    runs = finalist_runs(StudyOptions(finalists=1, seeds=2), [row])
    assert [r["head"] for r in runs] == [{"pooling": "mean"}] * 2 and [r["train"]["seed"] for r in runs] == [2, 3]


def test_finalist_jobs_hold_only_runs_that_train_as_one_fused_group(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    """Finalists are grouped by what can share a batch, not by their place in the list: a job whose
    members the worker would split trains them one after another."""
    from autoprompt_search.backbones import BackboneInfo, backbone_info, load_backbone
    from autoprompt_search.study.finalists import fused_groups
    from autoprompt_search.training.fused import partition

    base = {"model": tiny_model_dir, "data": {"task": "sst2", "source": "files", "data_dir": tiny_sst_dir}}
    configs = [
        {"method": {"name": "deep", "layers": [0], "length": 4}, "train": {"lr": 0.1}},  # first layer 0
        {"method": {"name": "late", "layer": 1, "length": 4}, "train": {"lr": 0.01}},  # first layer 1
        {"method": {"name": "deep", "layers": [0, 1], "length": 4}, "train": {"lr": 0.3}},  # first layer 0
    ]
    runs = [
        {**c, "train": {**c["train"], "seed": s}, "finalist_of": str(i)} for i, c in enumerate(configs) for s in (2, 3)
    ]
    options = StudyOptions(finalists=3, seeds=2, fuse=4, experiment=base)
    groups = fused_groups(options, runs)
    # By position the first job would be both deep-[0] seeds and the late seeds: two groups on one worker.
    assert [[r["finalist_of"] for r in g] for g in groups] == [["0", "0", "2", "2"], ["1", "1"]]
    info = backbone_info(tiny_model_dir)
    assert info == BackboneInfo.of(load_backbone(tiny_model_dir))  # read on the meta device, as loaded
    for group in groups:  # the worker, which adds the texts' mean length, keeps each job one group
        assert len(partition([experiment_for(base, r) for r in group], info, options.fuse, text_tokens=12.0)) == 1
    assert [len(g) for g in fused_groups(StudyOptions(finalists=3, seeds=2, fuse=1, experiment=base), runs)] == [1] * 6


def test_top_k_and_pareto_selection() -> None:
    rows = [
        {"trial_id": "a", "number": 0, "dev_score": 0.9, "trainable_params": 1000, "history": "[]"},
        {"trial_id": "b", "number": 1, "dev_score": 0.8, "trainable_params": 10, "history": "[]"},
        {"trial_id": "c", "number": 2, "dev_score": 0.7, "trainable_params": 100, "history": "[]"},  # dominated by b
        {"trial_id": "d", "number": 3, "dev_score": 0.9, "trainable_params": 1000, "history": "[]"},  # ties a
    ]
    acc = Objective("dev_score", "max")
    assert [r["trial_id"] for r in rank_top(rows, acc, 3)] == ["a", "d", "b"]
    front = pareto_front(rows, [acc, Objective("trainable_params", "min")])
    assert [r["trial_id"] for r in front] == ["a", "d", "b"]


def _row(trial_id: str, number: int, status: str, score: float | None, config: str, **kw: Any) -> dict[str, Any]:
    return {"trial_id": trial_id, "number": number, "status": status, "dev_score": score, "config": config,
            "history": "[]", "checkpoint": f"/ckpt/{trial_id}", "method": "deep", "finalist_of": None,
            "test_score": None, **kw}  # fmt: skip


def test_finalists_are_distinct_finished_configs_and_the_best_is_the_best_median() -> None:
    acc = Objective("dev_score", "max")
    searched = [
        _row("lucky", 0, "TERMINATED", 0.95, "A"),
        _row("same-config", 1, "STOPPED", 0.94, "A"),  # A again: one finalist per configuration
        _row("collapsed", 2, "COLLAPSED", None, "C"),
        _row("steady", 3, "TERMINATED", 0.90, "B"),
        _row("third", 4, "TERMINATED", 0.50, "D"),
    ]
    assert [r["trial_id"] for r in choose_finalists(searched, [acc], 2)] == ["lucky", "steady"]
    assert best_row(searched, [acc])["trial_id"] == "lucky"  # no finalists yet: the search's best
    finals = [
        # A: one seed wins, one collapses (counts as the worst), one is poor -> median 0.60
        _row("a1", 5, "TERMINATED", 0.97, "A", finalist_of="lucky", seed=2, test_score=0.9),
        _row("a2", 6, "COLLAPSED", None, "A", finalist_of="lucky", seed=3),
        _row("a3", 7, "TERMINATED", 0.60, "A", finalist_of="lucky", seed=4, test_score=0.5),
        # B: steady -> median 0.89
        _row("b1", 8, "TERMINATED", 0.88, "B", finalist_of="steady", seed=2, test_score=0.8),
        _row("b2", 9, "TERMINATED", 0.89, "B", finalist_of="steady", seed=3, test_score=0.82),
        _row("b3", 10, "TERMINATED", 0.91, "B", finalist_of="steady", seed=4, test_score=0.84),
    ]
    groups = {g["finalist_of"]: g for g in finalist_groups(searched + finals, [acc])}
    assert groups["lucky"]["dev_score"] == pytest.approx(0.60) and groups["lucky"]["scored"] == 2
    assert (groups["lucky"]["dev_score_min"], groups["lucky"]["dev_score_max"]) == (0.60, 0.97)
    assert groups["steady"]["dev_score"] == pytest.approx(0.89) and groups["steady"]["test_median"] == 0.82
    best = best_row(searched + finals, [acc])
    assert best["finalist_of"] == "steady" and best["trial_id"] == "b3"  # exported: its best seed
    assert best["checkpoint_dev_score"] == 0.91 and best["dev_score"] == pytest.approx(0.89)


def test_error_line_finds_the_root_cause() -> None:
    trace = (
        "Traceback (most recent call last):\n  File x\nray.train.TrainingFailedError: worker failed\n"
        "autoprompt_search.training.loop.TrainingError: loss became nan at step 3; lower --lr or check the data\n"
        "\nThe above exception was the direct cause of:\nray.exceptions.RayTaskError(TrainingFailedError): boom"
    )
    assert error_line(trace).endswith("loss became nan at step 3; lower --lr or check the data")


def test_bad_studies_fail_before_ray_starts(tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path) -> None:
    import ray

    bad_space = {"methods": {"deep": {"layers": {"type": "layer_set", "depth": [0.5, 0.2]}, "bogus": 1}, "nope": {}}}
    with pytest.raises(SearchSpaceError) as err:
        run_study(options(tiny_model_dir, tiny_sst_dir, space=bad_space), tmp_path)
    assert len(err.value.problems) == 3
    missing = tiny_experiment(tiny_model_dir, str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="data"):
        run_study(options(tiny_model_dir, tiny_sst_dir, experiment=missing), tmp_path)
    fixed_layer = {"methods": {"late": {"layer": 9}}}
    with pytest.raises(ConfigError, match="beyond a 4-layer model"):
        run_study(options(tiny_model_dir, tiny_sst_dir, space=fixed_layer), tmp_path)
    assert not ray.is_initialized() and not any(tmp_path.iterdir())


def test_a_capped_finalist_count_is_said_before_the_study_starts() -> None:
    opts = StudyOptions(name="s", space={"methods": {"deep": {}}}, num_samples=2, finalists=10)
    assert opts.notices == ["finalists: 10 asked of a 2-trial search; at most 2 configurations can be retrained"]
    assert StudyOptions(name="s", space={"methods": {"deep": {}}}, num_samples=8, finalists=2).notices == []


# ---- on a local Ray -------------------------------------------------------------------------


def assert_no_placement_group_left(wait_s: float = 60.0) -> None:
    """Ray Train's cleaner frees a stopped trial's placement group asynchronously: slower on a loaded machine."""
    from ray.util import placement_group_table

    deadline = time.monotonic() + wait_s
    while (
        left := [g for g in placement_group_table().values() if g["state"] != "REMOVED"]
    ) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, left


@pytest.mark.ray
def test_a_placement_group_left_after_every_trial_ended_is_removed(local_ray: None) -> None:
    """What Ray Train leaks when a stopped trial's controller restarts its workers as it dies."""
    import ray
    from ray.util import placement_group, placement_group_table

    from autoprompt_search.study.cluster import remove_leaked_placement_groups

    leaked = placement_group([{"CPU": 0.1}])
    ray.get(leaked.ready())
    assert remove_leaked_placement_groups(wait_s=0.5) == 1
    assert placement_group_table()[leaked.id.hex()]["state"] == "REMOVED"
    assert remove_leaked_placement_groups(wait_s=0.5) == 0


@pytest.mark.ray
def test_study_of_four_trials_two_concurrent(
    local_ray: None, tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path
) -> None:
    opts = options(tiny_model_dir, tiny_sst_dir, scheduler="asha", sampler="tpe", search_seed=3)
    run = run_study(opts, tmp_path)
    rows = read_trials(tmp_path / "s")
    assert run.rows == rows and len(rows) == 4 and len({r["trial_id"] for r in rows}) == 4
    for row in rows:
        history = json.loads(row["history"])
        assert row["evaluations"] == len(history) >= 1 and history[-1]["step"] == row["last_step"]
        scores = [h["eval_score"] for h in history if not h["eval_collapsed"]]  # collapsed ones never count
        assert row["collapsed_evals"] == len(history) - len(scores)
        assert row["status"] == ("COLLAPSED" if not scores else "STOPPED" if row["last_step"] < 6 else "TERMINATED")
        assert row["dev_score"] == (max(scores) if scores else None)
        assert row["trainable_params"] > 0 and row["wall_seconds"] > row["worker_seconds"] > 0
        assert Path(row["checkpoint"], "prompt.safetensors").is_file() and (row["error"] is None) == (
            row["status"] != "COLLAPSED"
        )
        sampled = json.loads(row["config"])
        assert sampled["method"]["name"] == row["method"] in ("deep", "late") and 0.01 <= sampled["train"]["lr"] <= 0.1
    # Two at a time: no moment with three trials running.
    events = sorted([(r["started_at"], 1) for r in rows] + [(r["finished_at"], -1) for r in rows])
    running = [sum(e for _, e in events[: i + 1]) for i in range(len(events))]
    assert max(running) == 2
    # ...and their Train workers really compute at the same time (not queued behind each other's CPU).
    spans = sorted(
        (r["started_at"] + r["startup_seconds"], r["started_at"] + r["startup_seconds"] + r["worker_seconds"])
        for r in rows
    )
    assert any(b_start < a_end for (_, a_end), (b_start, _) in itertools.pairwise(spans))
    # ASHA stops every trial (at max_t if not before), killing its Train controller: the Train
    # workers' placement groups must still be freed, or later trials pend forever.
    assert_no_placement_group_left()
    # The Optuna study beside the results knows every trial.
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(
        study_name="s", storage=JournalStorage(JournalFileBackend(str(tmp_path / "s" / "optuna.journal")))
    )
    failed = sum(r["status"] == "COLLAPSED" for r in rows)
    assert (
        len(study.trials) == 4
        and sorted(t.state.name for t in study.trials) == ["COMPLETE"] * (4 - failed) + ["FAIL"] * failed
    )
    # TensorBoard files per trial.
    assert len(list((tmp_path / "s" / "tune").glob("*/events.out.tfevents*"))) == 4

    # Export the best two: they reload and predict the trial's dev score; config.yaml retrains.
    exported = export_study(tmp_path / "s", top=2)
    assert [p.name.split("-")[1] for p in exported] == [
        r["trial_id"]
        for r in sorted((r for r in rows if r["dev_score"] is not None), key=lambda r: (-r["dev_score"], r["number"]))[
            :2
        ]
    ]
    best = next(r for r in rows if r["trial_id"] == exported[0].name.split("-")[1])
    metrics, _ = predict_run(exported[0], "dev", device="cpu")
    assert metrics["score"] == pytest.approx(best["dev_score"], abs=1e-6)
    cfg = load_config_file(exported[0] / "config.yaml")
    assert method_to_dict(cfg.method)["name"] == best["method"] and cfg.train.device == "auto"
    with pytest.raises(ConfigError, match="already holds files"):
        export_study(tmp_path / "s", top=1)


@pytest.mark.ray
def test_errors_land_in_the_table(local_ray: None, tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path) -> None:
    # lr 1e30 makes the loss NaN: the trial fails with our one-line reason, the study goes on.
    space = {
        "methods": {"deep": {"layers": [0], "length": 2}},
        "train": {"lr": {"type": "categorical", "choices": [1.0e30]}},
    }
    run = run_study(options(tiny_model_dir, tiny_sst_dir, space=space, num_samples=1), tmp_path)
    (row,) = run.rows
    assert row["status"] == "ERROR" and "loss became" in row["error"] and "lower --lr" in row["error"]


def test_optuna_is_told_how_each_trial_ended(tmp_path: Path) -> None:
    """All steps: COMPLETE with its best score; stopped early by ASHA: PRUNED (as fused studies
    tell it), so TPE does not rank a score at a fraction of the budget among finished trials;
    no finite score: FAIL."""
    import optuna

    from autoprompt_search.study.journal import journal_storage
    from autoprompt_search.study.searcher import ResumableOptunaSearch
    from autoprompt_search.study.space import SearchSpace

    searcher = ResumableOptunaSearch(
        space=SearchSpace.from_dict(SPACE).sampler(num_layers=2), metric="dev_score", mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0), study_name="s", journal=str(tmp_path / "j"),
    )  # fmt: skip
    ends = {
        "full": {"dev_score": 0.8, "trained_to_end": True},
        "stopped": {"dev_score": 0.9, "trained_to_end": False},
        "collapsed": {"dev_score": float("nan"), "trained_to_end": True},
    }
    for trial_id, end in ends.items():
        searcher.suggest(trial_id)
        searcher.on_trial_result(trial_id, {"dev_score": 0.5, "training_iteration": 1})
        searcher.on_trial_complete(trial_id, {**end, "training_iteration": 2})  # Tune: the last result comes here
    trials = optuna.load_study(study_name="s", storage=journal_storage(tmp_path / "j")).trials
    assert [(t.state.name, t.value) for t in trials] == [("COMPLETE", 0.8), ("PRUNED", 0.9), ("FAIL", None)]
    assert trials[1].intermediate_values == {1: 0.5, 2: 0.9}  # the result that stopped it: what TPE ranks it by


@pytest.mark.ray
def test_a_collapsed_trial_is_collapsed_never_best_and_failed_in_optuna(
    local_ray: None, tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path
) -> None:
    # A probe at lr 1000 predicts one class at every evaluation (accuracy 0.5 on the balanced dev
    # set); at lr 10 it does not at step 4 and scores 0.458 there. Plain selection would rank the
    # collapsed 0.5 first.
    space = {"methods": {"probe": {}}, "train": {"lr": {"type": "categorical", "choices": [1000.0, 10.0]}}}
    base = tiny_experiment(tiny_model_dir, tiny_sst_dir)
    base["train"] |= {"warmup_ratio": 0.0, "grad_clip": 0.0}
    opts = options(tiny_model_dir, tiny_sst_dir, space=space, experiment=base, sampler="random", search_seed=1)
    run = run_study(opts, tmp_path)
    collapsed = [r for r in run.rows if json.loads(r["config"])["train"]["lr"] == 1000.0]
    fine = [r for r in run.rows if json.loads(r["config"])["train"]["lr"] == 10.0]
    assert collapsed and fine, run.rows  # the seed draws both
    for row in collapsed:
        assert row["status"] == "COLLAPSED" and "every evaluation predicted a single class" in row["error"]
        assert row["dev_score"] is None and row["collapsed_evals"] == row["evaluations"] == 3
    for row in fine:
        assert row["status"] == "TERMINATED" and row["collapsed_evals"] == 2
        assert row["dev_score"] == pytest.approx(0.4583, abs=1e-3)  # not the collapsed evaluations' 0.5
    assert summarize_study(run.rows, opts.parsed_objectives)["best"]["trial_id"] in {r["trial_id"] for r in fine}
    exported = [p.name.split("-")[1] for p in export_study(tmp_path / "s", top=5)]
    assert exported == [r["trial_id"] for r in fine]
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "s" / "optuna.journal")))
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert {(t.params["train.lr"], t.state.name) for t in trials} == {(1000.0, "FAIL"), (10.0, "COMPLETE")}


@pytest.mark.ray
def test_spt_darts_trials_checkpoint_and_export_the_retrained_layers(
    local_ray: None, tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path
) -> None:
    space = {
        "methods": {"spt": {"budget": {"type": "float", "low": 1.0, "high": 3.0}, "length": 2, "bottleneck": 8}},
        "train": {"lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}},
    }
    run = run_study(options(tiny_model_dir, tiny_sst_dir, space=space, num_samples=2), tmp_path)
    assert [r["status"] for r in run.rows] == ["TERMINATED", "TERMINATED"] and all(
        r["method"] == "spt" for r in run.rows
    )
    (exported,) = export_study(tmp_path / "s", top=1)
    cfg = load_config_file(exported / "config.yaml")
    budget = json.loads(next(r for r in run.rows if r["trial_id"] in exported.name)["config"])["method"]["budget"]
    assert cfg.method.search is False and len(cfg.method.layers) == max(1, round(budget))
    metrics, _ = predict_run(exported, "dev", device="cpu")
    assert metrics["score"] == pytest.approx(max(r["dev_score"] for r in run.rows), abs=1e-6)


@pytest.mark.ray
def test_resume_after_interruption_runs_no_trial_twice(
    local_ray: None, tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opts = options(
        tiny_model_dir, tiny_sst_dir, max_concurrent=1, sampler="random", search_seed=5, finalists=1, seeds=2
    )
    marker = str(tmp_path / "interrupted")
    interrupted = run_study(opts, tmp_path / "r", callbacks=[InterruptAfter(2, marker)])
    # 6 tiny steps: a trial may predict one class at every evaluation and end COLLAPSED instead
    ended = ("TERMINATED", "COLLAPSED")
    first = {r["trial_id"]: r for r in read_trials(tmp_path / "r" / "s") if r["status"] in ended}
    assert os.path.exists(marker) and 2 <= len(first) < 4
    # Tune returns from a Ctrl-C: the study says so and never picks finalists from a partial search.
    assert interrupted.interrupted and not any(r["finalist_of"] for r in interrupted.rows)
    with pytest.raises(ConfigError, match="already exists; continue it with --resume s"):
        run_study(opts, tmp_path / "r")
    # The study moves elsewhere (a copy with the original gone): it resumes, exports and reports
    # from its own files, never through the paths of where it ran.
    import shutil

    shutil.move(tmp_path / "r", tmp_path / "moved")

    # Resumed, the search ends; Ctrl-C again after the first of the two finalist runs.
    from autoprompt_search.study import finalists

    marker2 = str(tmp_path / "interrupted-finalists")
    with monkeypatch.context() as m:
        m.setattr(finalists, "ProgressBar", lambda *a, **k: InterruptAfter(1, marker2))
        cut = resume_study("s", tmp_path / "moved")
    assert os.path.exists(marker2) and cut.interrupted and not (tmp_path / "moved" / "s" / "finished.json").exists()
    assert len([r for r in cut.rows if not r["finalist_of"]]) == 4
    resumed = resume_study("s", tmp_path / "moved")
    rows = read_trials(tmp_path / "moved" / "s")
    searched = [r for r in rows if not r["finalist_of"]]
    assert not resumed.interrupted and len(rows) == 6 and len({r["trial_id"] for r in rows}) == 6
    assert len(searched) == 4 and all(r["status"] in ended for r in rows)
    # Resuming the finished study runs nothing and joins no Ray.
    joined: list[object] = []
    again = resume_study("s", tmp_path / "moved", on_connect=lambda *a: joined.append(a))
    assert again.finished_before and not joined and again.rows == rows
    for trial_id, before in first.items():  # finished trials were not run again
        after = next(r for r in rows if r["trial_id"] == trial_id)
        assert after["started_at"] == before["started_at"] and after["finished_at"] == before["finished_at"]
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "moved" / "s" / "optuna.journal")))
    trials = optuna.load_study(study_name="s", storage=storage).trials
    states = [t.state.name for t in trials if "finalist_of" not in t.user_attrs]  # the finalist's median apart
    collapsed = sum(r["status"] == "COLLAPSED" for r in searched)
    assert (states.count("COMPLETE"), states.count("FAIL")) == (4 - collapsed, collapsed)  # each told once
    assert not (tmp_path / "r").exists() and all(
        Path(r["checkpoint"]).is_relative_to(tmp_path / "moved") for r in rows if r["checkpoint"]
    )
    from autoprompt_search.study.report import write_report

    assert export_study(tmp_path / "moved" / "s", top=1) and write_report(tmp_path / "moved" / "s").is_file()


@pytest.mark.ray
def test_fractional_gpus_pack_trials(local_ray: None, tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path) -> None:
    import ray

    assert ray.cluster_resources()["GPU"] == 1  # one logical GPU
    opts = options(tiny_model_dir, tiny_sst_dir, gpus_per_worker=0.5, cpus_per_worker=0.5, num_samples=2)
    run = run_study(opts, tmp_path)
    assert all(r["status"] in ("TERMINATED", "COLLAPSED") for r in run.rows) and len(run.rows) == 2
    assert all(r["gpu_ids"] == "0" for r in run.rows)  # both on the one GPU, half each
    assert all(r["device_seconds"] == pytest.approx(r["wall_seconds"] * 0.5) for r in run.rows)
    with pytest.raises(ConfigError, match="needs 2 GPUs"):
        run_study(
            options(
                tiny_model_dir, tiny_sst_dir, gpus_per_worker=1, workers_per_trial=2, cpus_per_worker=0.5, name="g"
            ),
            tmp_path,
        )


@pytest.mark.ray
def test_fused_study_writes_a_row_per_member_resumes_and_exports(
    local_ray: None, tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path
) -> None:
    # Four trials in fused groups of two, one Train job at a time, ASHA per member through Optuna;
    # interrupted after the first group, then resumed.
    opts = options(
        tiny_model_dir, tiny_sst_dir, fuse=2, max_concurrent=1, scheduler="asha", sampler="random", search_seed=2
    )
    marker = str(tmp_path / "interrupted")
    run_study(opts, tmp_path, callbacks=[InterruptAfter(1, marker)])
    first = {r["trial_id"]: r for r in read_trials(tmp_path / "s")}
    assert os.path.exists(marker) and len(first) == 2 and len({r["group_id"] for r in first.values()}) == 1
    assert all(r["status"] in ("TERMINATED", "STOPPED", "COLLAPSED") for r in first.values())

    resume_study("s", tmp_path)
    rows = read_trials(tmp_path / "s")
    assert len(rows) == 4 and len({r["trial_id"] for r in rows}) == 4  # one row per member, none twice
    assert sorted(len([r for r in rows if r["group_id"] == g]) for g in {r["group_id"] for r in rows}) == [2, 2]
    for row in rows:
        history = json.loads(row["history"])
        scores = [h["eval_score"] for h in history if not h["eval_collapsed"]]  # collapsed ones never count
        assert row["status"] in (("TERMINATED", "STOPPED") if scores else ("COLLAPSED",)), row
        assert row["trial_id"].startswith(row["group_id"] + "-") and (row["error"] is None) == bool(scores)
        assert row["evaluations"] == len(history) >= 1 and row["dev_score"] == (max(scores) if scores else None)
        assert Path(row["checkpoint"], "prompt.safetensors").is_file() if scores else row["checkpoint"] is None
    for trial_id, before in first.items():  # the finished group was not trained again
        assert next(r for r in rows if r["trial_id"] == trial_id)["finished_at"] == before["finished_at"]
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "s" / "optuna.journal")))
    trials = optuna.load_study(study_name="s", storage=storage).trials
    scored = [r for r in rows if r["dev_score"] is not None]
    assert len(trials) == 4 and sum(t.state.name == "COMPLETE" for t in trials) == len(scored)  # each told once
    assert sum(t.state.name == "FAIL" for t in trials) == 4 - len(scored)  # collapsed members
    assert sorted(t.value for t in trials if t.value is not None) == sorted(r["dev_score"] for r in scored)

    (exported,) = export_study(tmp_path / "s", top=1)
    best = max(scored, key=lambda r: (r["dev_score"], -r["number"]))
    assert exported.name == f"01-{best['trial_id']}"
    metrics, _ = predict_run(exported, "dev", device="cpu")
    assert metrics["score"] == pytest.approx(best["dev_score"], abs=1e-6)


@pytest.mark.ray
def test_local_ray_listens_on_loopback_only(local_ray: None) -> None:
    """Every TCP port the local Ray's processes listen on is bound to 127.0.0.1 (checked with `ss -ltnp`)."""
    import re
    import shutil
    import subprocess

    import psutil

    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed")
    ours = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
    listeners = []
    for line in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines():
        pids = {int(x) for x in re.findall(r"pid=(\d+)", line)}
        if pids & ours:
            listeners.append(line.split()[3])  # local address:port
    assert len(listeners) >= 3, listeners  # GCS, raylet, dashboard at least
    exposed = [a for a in listeners if not a.startswith(("127.0.0.1:", "[::1]:", "[::ffff:127.0.0.1]:"))]
    assert exposed == []


def test_exposing_the_dashboard_says_the_risk() -> None:
    from autoprompt_search.study.cluster import ray_dashboard_warning

    assert ray_dashboard_warning("127.0.0.1") is None and ray_dashboard_warning("localhost") is None
    warning = ray_dashboard_warning("0.0.0.0")
    assert warning is not None and "run code" in warning and "SSH tunnel" in warning


def test_space_yaml_files_load() -> None:
    from autoprompt_search.study.options import resolve_space
    from search_spaces import shipped

    assert {"all", "layers", "lpt", "learned"} <= set(shipped())
    for name in ("all", "layers", "lpt", "learned"):
        data, path = resolve_space(name)
        assert Path(path) == shipped()[name] and Path(path).parent.name == "search_spaces"
        assert data["methods"], name  # validated by resolve_space itself (it raises otherwise)
    data, _ = resolve_space("all")
    assert set(data["methods"]) == {"probe", "deep", "late", "lora"}
    assert (
        data["methods"]["deep"]["form"]["choices"] == ["hidden", "kv"]
        and data["methods"]["deep"]["length"]["high"] == 128
    )
    assert data["methods"]["late"]["train"]["lr"] == {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}
    with pytest.raises(ConfigError, match="neither a file nor a shipped space"):
        resolve_space("nonexistent")


@pytest.mark.ray
def test_a_fused_group_trains_over_two_ddp_workers_as_over_one(
    local_ray: None, tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path
) -> None:
    # The same two sampled configurations as one fused group, once on one Train worker and once
    # sharded across two DDP ranks (one per CPU): each member's result is the same (dropout off:
    # ranks draw their own dropout masks).
    import optuna

    from autoprompt_search.study.journal import journal_storage

    space = {"methods": {"late": {**SPACE["methods"]["late"], "dropout": 0.0}}, "train": SPACE["train"]}
    results = {}
    for workers in (1, 2):
        opts = options(
            tiny_model_dir, tiny_sst_dir, name=f"w{workers}", fuse=2, num_samples=2, max_concurrent=1,
            workers_per_trial=workers, sampler="random", search_seed=5, space=space,
        )  # fmt: skip
        run_study(opts, tmp_path)
        rows = read_trials(tmp_path / f"w{workers}")
        # Without ASHA (fifo) Optuna still gets every evaluation as an intermediate value (dashboard, TPE).
        journal = optuna.load_study(
            study_name=f"w{workers}", storage=journal_storage(tmp_path / f"w{workers}" / "optuna.journal")
        )
        evaluations = {
            t.user_attrs["tune_trial_id"]: len(t.intermediate_values)
            for t in journal.trials
            if "finalist_of" not in t.user_attrs
        }
        assert (
            evaluations == {r["trial_id"]: r["evaluations"] for r in rows if not r["finalist_of"]}
            and min(evaluations.values()) > 0
        )
        # 6 tiny steps: a member may predict one class at every evaluation (COLLAPSED), the same
        # way on one worker and on two
        assert len(rows) == 2 and {r["status"] for r in rows} <= {"TERMINATED", "COLLAPSED"}, rows
        results[workers] = {r["config"]: (r["dev_score"], json.loads(r["history"])) for r in rows}
    assert results[1].keys() == results[2].keys()
    for config, (score, history) in results[1].items():
        ddp_score, ddp_history = results[2][config]
        assert ddp_score == score if score is None else ddp_score == pytest.approx(score, abs=1e-6)
        assert [h["eval_score"] for h in ddp_history] == [h["eval_score"] for h in history]
        assert [h["train_loss"] for h in ddp_history] == pytest.approx([h["train_loss"] for h in history], rel=1e-4)
    assert_no_placement_group_left()


def test_a_study_refuses_an_epoch_budget(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    from autoprompt_search.experiment_options import ExperimentOptions
    from autoprompt_search.study.options import make_options

    base = ExperimentOptions(model=tiny_model_dir, task="sst2", data_dir=tiny_sst_dir, epochs=1.0)
    with pytest.raises(ConfigError, match="train.epochs: a study budgets trials in steps; use --steps"):
        make_options("layers", base, name="s")


@pytest.mark.ray
def test_enqueue_and_warm_start_seed_a_new_study(
    local_ray: None, tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path
) -> None:
    """--enqueue: the given configuration is the first trial; --warm-start: the source study's
    completed trials are in the new study's Optuna history (as told trials, not run again)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from autoprompt_search.study.options import read_enqueued

    first = run_study(options(tiny_model_dir, tiny_sst_dir, name="a", num_samples=2, sampler="random"), tmp_path)
    done = [r for r in first.rows if r["status"] == "TERMINATED"]
    wanted = tmp_path / "wanted.yaml"
    wanted.write_text(yaml.safe_dump({"method": {"name": "late", "layer": 2, "length": 2, "bottleneck": 8},
                                      "train": {"lr": 0.05}}))  # fmt: skip
    opts = options(
        tiny_model_dir, tiny_sst_dir, name="b", num_samples=1, enqueue=read_enqueued([str(wanted)]),
        warm_start=str(tmp_path / "a"),
    )  # fmt: skip
    (row,) = run_study(opts, tmp_path).rows
    assert json.loads(row["config"]) == {"method": {"name": "late", "layer": 2, "length": 2, "bottleneck": 8},
                                         "train": {"lr": 0.05}}  # fmt: skip
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "b" / "optuna.journal")))
    trials = optuna.load_study(study_name="b", storage=storage).trials
    told = [t for t in trials if "warm_start_from" in t.user_attrs]
    assert len(told) == len(done) and len(trials) == len(told) + 1
    with pytest.raises(ConfigError, match="optimised"):
        run_study(options(tiny_model_dir, tiny_sst_dir, name="c", objectives=["dev_score:max", "trainable_params:min"],
                          scheduler="fifo", warm_start=str(tmp_path / "a")), tmp_path)  # fmt: skip


def test_resume_conflicts_name_only_flags_that_change_the_stored_study(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    from autoprompt_search.study.options import resume_conflicts

    options = StudyOptions(num_samples=8, experiment=tiny_experiment(tiny_model_dir, tiny_sst_dir))
    same = {"num_samples": 8, "objectives": ["dev_score:max"], "steps": 6, "data_dir": tiny_sst_dir}
    assert resume_conflicts(options, same) == []
    changed = resume_conflicts(
        options, {"num_samples": 9, "steps": 7, "config_file": "x.yaml", "objectives": ["train_loss"]}
    )
    assert changed == [
        "--num-samples 9 differs from the study's 8",
        "--steps 7 differs from the study's 6",
        "--config cannot change a resumed study",
        "--objective ['train_loss:min'] differs from the study's ['dev_score:max']",
    ]


def test_finalists_medians_are_told_to_optuna_once(tmp_path: Path) -> None:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from autoprompt_search.study.finalists import tell_optuna
    from autoprompt_search.study.records import SCHEMA, write_trials

    options = StudyOptions(name="demo", space={"methods": {"deep": {}}}, finalists=2, seeds=2)
    options.save(tmp_path)
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "optuna.journal")))
    study = optuna.create_study(study_name="demo", storage=storage, direction="maximize")
    for i in range(2):
        trial = study.ask()
        trial.suggest_float("train.lr", 1e-3, 1e-1, log=True)
        trial.set_user_attr("tune_trial_id", f"t{i}")
        study.tell(trial, 0.9 - i / 10)

    def row(tid: str, number: int, status: str, score: float | None, **extra: Any) -> dict[str, Any]:
        return {n: None for n in SCHEMA.names} | {"trial_id": tid, "number": number, "status": status,
                                                  "dev_score": score, "history": "[]"} | extra  # fmt: skip

    rows = [row("t0", 0, "TERMINATED", 0.9), row("t1", 1, "TERMINATED", 0.8),
            row("f0", 2, "TERMINATED", 0.7, finalist_of="t0", seed=2),
            row("f1", 3, "TERMINATED", 0.8, finalist_of="t0", seed=3),
            row("f2", 4, "TERMINATED", 0.6, finalist_of="t1", seed=2),
            row("f3", 5, "RUNNING", None, finalist_of="t1", seed=3)]  # fmt: skip
    write_trials(tmp_path, rows)
    assert tell_optuna(options, tmp_path) == [2]  # t1's seeds have not all ended
    first, _, told = optuna.load_study(study_name="demo", storage=storage).trials
    assert told.value == pytest.approx(0.75) and told.params == first.params
    assert told.user_attrs == {"finalist_of": "t0", "seeds": 2}
    assert tell_optuna(options, tmp_path) == []  # a resume does not tell it twice


@pytest.mark.ray
def test_overwrite_replaces_a_finished_study_once_the_new_one_has_run(
    local_ray: None, tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path
) -> None:
    first = run_study(options(tiny_model_dir, tiny_sst_dir, num_samples=1), tmp_path)
    second = run_study(options(tiny_model_dir, tiny_sst_dir, num_samples=2), tmp_path, overwrite=True)
    assert len(first.rows) == 1 and len(second.rows) == 2
    assert {r["trial_id"] for r in read_trials(tmp_path / "s")} == {r["trial_id"] for r in second.rows}
    assert (tmp_path / "s" / "finished.json").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["s"]


@pytest.mark.ray
def test_a_trial_trains_what_its_configuration_trains_alone(
    local_ray: None, tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path
) -> None:
    """The same configuration and seed, as the second trial of a study (beside another) and trained
    alone, gives the same history, with dropout on (the search path is reproducible)."""
    import shutil

    from autoprompt_search.training.loop import train_experiment
    from autoprompt_search.training.workspace import prepare_workspace

    model = tmp_path / "tiny-dropout"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    config.update(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    (model / "config.json").write_text(json.dumps(config))
    target = {"method": {"name": "deep", "layers": [1, 2], "length": 3}, "train": {"lr": 0.05}}
    other = {"method": {"name": "late", "layer": 2, "length": 2, "bottleneck": 8}, "train": {"lr": 0.02}}
    opts = options(str(model), tiny_sst_dir, num_samples=2, enqueue=[other, target])
    rows = run_study(opts, tmp_path).rows
    (row,) = [r for r in rows if r["method"] == "deep"]
    cfg = experiment_for(opts.experiment, target)
    cfg.train.device = "cpu"
    alone = train_experiment(cfg, prepare_workspace(cfg))
    keys = ("step", "train_loss", "eval_score")
    assert [[h[k] for k in keys] for h in json.loads(row["history"])] == [[h[k] for k in keys] for h in alone.history]


# Configurations that learn within 8 tiny steps (collapsed trials would all tie at -inf for ASHA).
LEARNING_SPACE = {
    "methods": {"deep": {"layers": [0], "length": {"type": "int", "low": 1, "high": 6}}},
    "train": {"lr": {"type": "float", "low": 0.02, "high": 0.5, "log": True}},
}


@pytest.mark.ray
def test_a_step_budget_ends_the_search_when_no_full_run_fits(
    local_ray: None, tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path
) -> None:
    """--budget 3runs at 8 steps a run under ASHA's brackets (first rung at N/8): every trained step
    counts, the search ends by itself once no full run fits (not as an interruption) and the
    finalists run. (Tiny trials train 8 steps faster than Tune can stop them, so how many more
    configurations the brackets try is measured on MiniLM in results/quality/, and the step
    accounting with stopped trials in test_step_budget.py.)"""
    opts = options(tiny_model_dir, tiny_sst_dir, experiment=tiny_experiment(tiny_model_dir, tiny_sst_dir, steps=8),
                   scheduler="asha", budget="3runs", num_samples=30, sampler="random", space=LEARNING_SPACE,
                   finalists=1, seeds=1)  # fmt: skip
    run = run_study(opts, tmp_path)
    searched = [r for r in run.rows if not r["finalist_of"]]
    assert not run.interrupted and (tmp_path / "s" / "finished.json").is_file()
    assert len(searched) >= 3 and sum(r["last_step"] for r in searched) <= 24
    assert len([r for r in run.rows if r["finalist_of"]]) == 1


def test_checkpoints_are_stored_relative_to_the_study_and_older_tables_re_rooted(tmp_path: Path) -> None:
    from autoprompt_search.study.records import SCHEMA, write_trials

    study = tmp_path / "copy" / "s"
    study.mkdir(parents=True)
    row = {name: None for name in SCHEMA.names} | {"trial_id": "t0", "number": 0}
    write_trials(study, [{**row, "checkpoint": str(study / "train" / "t0" / "checkpoint_000001")}])
    import pyarrow.parquet as pq

    assert pq.read_table(study / "trials.parquet").to_pylist()[0]["checkpoint"] == "train/t0/checkpoint_000001"
    assert read_trials(study)[0]["checkpoint"] == str(study / "train" / "t0" / "checkpoint_000001")
    # A table written before paths were relative names where the study ran: read from its own place.
    from autoprompt_search.storage.tables import write_table

    old = "/elsewhere/results/s/train/t0/checkpoint_000001"
    write_table(study / "trials.parquet", [{**row, "checkpoint": old}], SCHEMA)
    assert read_trials(study)[0]["checkpoint"] == str(study / "train" / "t0" / "checkpoint_000001")
