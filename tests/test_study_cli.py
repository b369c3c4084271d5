"""`autoprompt search / status / export` from the command line, joining a `ray start --head` cluster on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()
AUTOPROMPT = [sys.executable, "-m", "cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@pytest.mark.slow
def test_search_joins_an_existing_cluster(
    head_cluster: str, tiny_model_dir: str, tiny_sst_dir: str, small_space: Path, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # A GPU asked for where the cluster has none: one line, exit 2, nothing written.
    bad = subprocess.run(
        [*AUTOPROMPT, *search_args(tiny_model_dir, tiny_sst_dir, results, small_space, "--address", head_cluster,
                                   "--gpus-per-trial", "0.25")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2, bad.stderr
    assert "has no GPU; use --gpus-per-trial 0" in bad.stderr and not (results / "default").exists()

    done = subprocess.run(
        [*AUTOPROMPT, *search_args(tiny_model_dir, tiny_sst_dir, results, small_space, "--address", head_cluster,
                                   "--num-samples", "2", "--name", "joined")],
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
