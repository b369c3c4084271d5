"""Faults injected into real studies on a local Ray: a Train worker SIGKILLed mid-trial, the
`autoprompt search` driver SIGKILLed mid-study, a node leaving a multi-node cluster, a trial that
raises, and a results directory that cannot take the study."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import tiny_experiment
from test_study import SPACE, options

from autoprompt_search.errors import ConfigError
from autoprompt_search.study.records import read_trials
from autoprompt_search.study.runner import run_study

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def train_workers() -> list[psutil.Process]:
    """This test's Ray Train worker processes (Ray names them `ray::RayTrainWorker...`): only
    descendants of this process, whose `ray.init` started the local cluster, so another Ray on
    the machine (a study running beside the tests) is never touched."""
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid in ours and any("RayTrainWorker" in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


def checkpoints(study: Path) -> list[Path]:
    return sorted(study.glob("train/*/checkpoint_*"))


def kill_a_train_worker_once(checkpointed: Any) -> tuple[threading.Thread, list[int]]:
    """A thread that SIGKILLs one Ray Train worker of this test once `checkpointed()` holds; the
    list gets the killed pid."""
    killed: list[int] = []

    def kill() -> None:
        wait_for(checkpointed, 120, "a first checkpoint")
        victim = wait_for(train_workers, 30, "a Ray Train worker")[0]
        killed.append(victim.pid)
        victim.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    return killer, killed


def evaluated_every_10_steps(model: str, data: str, name: str, trials: int) -> Any:
    """A study of `trials` concurrent deep-prompt trials, 120 steps, a checkpoint every 10."""
    experiment = tiny_experiment(model, data, steps=120)
    experiment["train"]["eval_every"] = 10
    space = {"methods": {"deep": {"layers": [1, 2], "length": 2}}, "train": {"lr": 0.05}}
    return options(
        model, data, name=name, space=space, experiment=experiment, num_samples=trials, max_concurrent=trials
    )


@pytest.fixture
def fresh_ray():  # a Ray of its own per test: the faults kill its processes
    import ray

    from autoprompt_search.study.cluster import start_local

    start_local(num_cpus=2)
    yield
    ray.shutdown()


def test_a_killed_train_worker_restarts_from_its_last_checkpoint(
    fresh_ray: None, tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path
) -> None:
    opts = evaluated_every_10_steps(tiny_model_dir, tiny_sst_dir, "k", trials=1)
    killer, killed = kill_a_train_worker_once(lambda: checkpoints(tmp_path / "k"))
    run_study(opts, tmp_path)
    killer.join(5)
    assert killed, "the worker was never killed"
    (row,) = read_trials(tmp_path / "k")
    assert row["status"] == "TERMINATED" and row["last_step"] == 120, row
    history = json.loads(row["history"])
    steps = [h["step"] for h in history]
    assert steps == list(range(10, 121, 10))  # no evaluation lost or repeated
    restarted = [h.get("resumed_from_step") for h in history if h.get("resumed_from_step")]
    assert restarted and restarted[0] >= 10  # the second attempt continued from a checkpoint, not step 0


def test_a_killed_fused_worker_resumes_its_spt_darts_members_without_searching_again(
    fresh_ray: None, tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path
) -> None:
    """A fused group of two SPT-DARTS trials (each searches its gates, then trains its derived
    layers alone in the group's Train job): the worker is killed once a member has a checkpoint;
    that member continues from it, with the layers it derived, instead of searching again."""
    opts = evaluated_every_10_steps(tiny_model_dir, tiny_sst_dir, "f", trials=2)
    opts.space = {"methods": {"spt": {"search": True, "length": 2, "bottleneck": 8, "top_k": 2, "search_steps": 20}}}
    opts.fuse, opts.max_concurrent = 2, 1
    killer, killed = kill_a_train_worker_once(
        lambda: list((tmp_path / "f").glob("train/*/members/*/training_state.json"))
    )
    run_study(opts, tmp_path)
    killer.join(5)
    assert killed, "the worker was never killed"
    rows = read_trials(tmp_path / "f")
    assert [r["status"] for r in rows] == ["TERMINATED", "TERMINATED"] and all(r["last_step"] == 120 for r in rows)
    for row in rows:
        assert [h["step"] for h in json.loads(row["history"])] == list(range(10, 121, 10))  # none lost or repeated
    restarted = [h["resumed_from_step"] for r in rows for h in json.loads(r["history"]) if h.get("resumed_from_step")]
    assert restarted and restarted[0] >= 10  # continued from its checkpoint, not from a new gate search


def test_trials_that_raise_or_run_out_of_memory_fail_alone_and_the_study_goes_on(
    fresh_ray: None, tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path
) -> None:
    # An LPT prompt of 120 vectors does not fit the tiny model's 128 positions beside 32 tokens: the
    # worker refuses it when it builds the configuration (the space check sees values, not the
    # model's positions). A bottleneck of 2e9 asks the allocator for 256 GB (a real out-of-memory
    # error). Those trials end ERROR with the reason, are not retried, Optuna hears FAIL; the
    # others finish. Enqueued, so every case runs whatever the sampler draws.
    huge = 2_000_000_000
    space = {
        "methods": {"late": {"layer": 1, "length": {"type": "categorical", "choices": [2, 120]},
                             "bottleneck": {"type": "categorical", "choices": [8, huge]}}},
        "train": {"lr": 0.05},
    }  # fmt: skip
    enqueue = [{"method": {"name": "late", "layer": 1, "length": n, "bottleneck": b}} for n, b in
               ((2, 8), (120, 8), (2, huge), (2, 8))]  # fmt: skip
    opts = options(tiny_model_dir, tiny_sst_dir, name="r", space=space, num_samples=4, sampler="random", search_seed=4,
                   enqueue=enqueue, portfolio=False)  # fmt: skip
    run = run_study(opts, tmp_path)
    by_case: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for row in run.rows:
        method = json.loads(row["config"])["method"]
        by_case.setdefault((method["length"], method["bottleneck"]), []).append(row)
    assert sorted(by_case) == [(2, 8), (2, huge), (120, 8)], run.rows
    # the good trials train to the end (a tiny one may predict one class: COLLAPSED, failed for Optuna)
    assert {r["status"] for r in by_case[(2, 8)]} <= {"TERMINATED", "COLLAPSED"}
    assert all(r["status"] == "ERROR" and "exceeds the model's 128 positions" in r["error"] for r in by_case[(120, 8)])
    assert all(r["status"] == "ERROR" and "out of memory" in r["error"] for r in by_case[(2, huge)])
    refused = by_case[(120, 8)] + by_case[(2, huge)]
    for row in refused:  # failed once, not restarted by FailureConfig
        assert len(list((tmp_path / "r" / "train" / row["trial_id"]).glob("checkpoint_*"))) == 0
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "r" / "optuna.journal")))
    states = sorted(t.state.name for t in optuna.load_study(study_name="r", storage=storage).trials)
    failed = len(refused) + sum(r["status"] == "COLLAPSED" for r in run.rows)
    assert states.count("FAIL") == failed and states.count("COMPLETE") == 4 - failed


def test_a_results_directory_that_cannot_hold_the_study_fails_before_ray(
    tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path
) -> None:
    import ray

    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot write"):
        run_study(options(tiny_model_dir, tiny_sst_dir), tmp_path / "file" / "results")
    with pytest.raises(ConfigError, match="free"):
        os.environ["AUTOPROMPT_MIN_FREE_GB"] = "1e9"  # more than any disk: the disk-full check
        try:
            run_study(options(tiny_model_dir, tiny_sst_dir), tmp_path / "results")
        finally:
            del os.environ["AUTOPROMPT_MIN_FREE_GB"]
    assert not ray.is_initialized() and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


def test_a_killed_driver_resumes_with_every_finished_trial_once(
    tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path
) -> None:
    import yaml

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    args = [
        "--model", tiny_model_dir, "--task", "sst2", "--data-dir", tiny_sst_dir, "--max-length", "32",
        "--steps", "60", "--eval-every", "10", "--batch-size", "8", "--results-dir", str(tmp_path / "results"),
        "--scheduler", "fifo", "--sampler", "random", "--num-samples", "4", "--max-concurrent", "2",
        "--num-cpus", "2", "--space", str(space), "--name", "crash", "--finalists", "0",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen(
        cli("search", *args), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    study = tmp_path / "results" / "crash"

    def finished() -> list[dict[str, Any]]:
        try:
            return [r for r in read_trials(study) if r["status"] == "TERMINATED"]
        except Exception:  # the driver is replacing the file
            return []

    try:
        before = wait_for(finished, 300, "a finished trial")
        driver.send_signal(signal.SIGKILL)  # the driver only: no chance to save anything
        driver.wait(30)
    finally:
        time.sleep(3)
        with contextlib.suppress(ProcessLookupError):  # the local Ray the driver started, if it outlived it
            os.killpg(driver.pid, signal.SIGKILL)
    before = finished()
    assert 1 <= len(before) < 4
    resumed = subprocess.run(
        cli("search", "--resume", "crash", "--results-dir", str(tmp_path / "results"), "--num-cpus", "2"),
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = read_trials(study)
    assert len(rows) == 4 and len({r["trial_id"] for r in rows}) == 4, rows
    assert {r["status"] for r in rows} == {"TERMINATED"}
    for row in before:  # finished before the kill: there once, untouched (not trained again)
        (same,) = [r for r in rows if r["trial_id"] == row["trial_id"]]
        assert same["finished_at"] == row["finished_at"] and same["history"] == row["history"]
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(study / "optuna.journal")))
    trials = optuna.load_study(study_name="crash", storage=storage).trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4, [t.state.name for t in trials]


def test_a_node_leaving_mid_study_has_its_trial_rescheduled(
    tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path
) -> None:
    """A 3-node Ray on 127.0.0.1 (`ray.cluster_utils.Cluster`): the node running a trial's Train
    worker is removed once that worker has checkpointed; the trial resumes on another node."""
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    from autoprompt_search.study.cluster import API_SERVER_ENV, free_port, prepare_environment

    prepare_environment(None)  # every node on 127.0.0.1
    port = free_port(8265)
    os.environ[API_SERVER_ENV] = f"http://127.0.0.1:{port}"  # Train's placement-group cleaner finds the dashboard
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "dashboard_port": port})
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        opts = evaluated_every_10_steps(tiny_model_dir, tiny_sst_dir, "n", trials=2)
        removed: list[str] = []

        def remove_a_worker_node() -> None:
            # Both trials have checkpointed: whichever worker goes, it has a checkpoint to resume from.
            wait_for(lambda: len({c.parent for c in checkpoints(tmp_path / "n")}) == 2, 180, "both trials' checkpoints")

            def worker_on_a_removable_node() -> Any:
                alive = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
                on = {a.node_id for a in alive}
                return next((n for n in nodes if n.node_id in on), None)

            node = wait_for(worker_on_a_removable_node, 60, "a Train worker on a non-head node")
            removed.append(node.node_id)
            cluster.remove_node(node, allow_graceful=False)

        remover = threading.Thread(target=remove_a_worker_node, daemon=True)
        remover.start()
        run = run_study(opts, tmp_path)
        remover.join(5)
        assert removed, "no node was removed"
        assert len(run.rows) == 2 and {r["status"] for r in run.rows} == {"TERMINATED"}, run.rows
        for row in run.rows:
            assert [h["step"] for h in json.loads(row["history"])] == list(range(10, 121, 10))
        assert any(h.get("resumed_from_step") for r in run.rows for h in json.loads(r["history"]))
    finally:
        ray.shutdown()
        cluster.shutdown()
        del os.environ[API_SERVER_ENV]
