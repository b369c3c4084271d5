"""`autoprompt dashboard`: optuna-dashboard on a study's journal, answering on loopback only."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from conftest import free_port

from autoprompt_search.study.journal import OPTUNA_FILE
from autoprompt_search.study.options import StudyOptions

AUTOPROMPT = str(Path(sys.executable).with_name("autoprompt"))


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    """A study directory whose journal holds three trials as the searchers write them."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    directory = tmp_path / "demo"
    directory.mkdir()
    StudyOptions(name="demo", space={"methods": {"deep": {}}}).save(directory)
    storage = JournalStorage(JournalFileBackend(str(directory / OPTUNA_FILE)))
    study = optuna.create_study(study_name="demo", storage=storage, direction="maximize")
    for i, lr in enumerate([0.01, 0.03, 0.1]):
        trial = study.ask()
        trial.suggest_float("train.lr", 1e-3, 1e-1, log=True)
        trial.set_user_attr("tune_trial_id", f"t{i}")
        trial.set_user_attr("method", "deep")
        trial.report(0.5 + lr, 1)
        study.tell(trial, 0.6 + lr)
    return directory


def wait_for_studies(port: int) -> list[dict]:
    """The dashboard's study list once it answers on loopback (up to ~20 s to come up)."""
    for _ in range(100):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                return json.loads(response.read())["study_summaries"]
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the dashboard never answered on 127.0.0.1")


@pytest.mark.slow
def test_dashboard_answers_on_loopback_with_the_studys_trials(study_dir: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([AUTOPROMPT, "dashboard", str(study_dir), "--port", str(port)], stderr=subprocess.PIPE)
    try:
        (study,) = wait_for_studies(port)
        assert study["study_name"] == "demo"
        url = f"http://127.0.0.1:{port}/api/studies/{study['study_id']}?after=0"
        with urllib.request.urlopen(url, timeout=5) as response:
            trials = json.loads(response.read())["trials"]
        assert len(trials) == 3
        attrs = [{a["key"]: a["value"] for a in t["user_attrs"]} for t in trials]
        assert [a["tune_trial_id"] for a in attrs] == ["t0", "t1", "t2"]
        assert all(t["intermediate_values"] for t in trials) and all(t["params"] for t in trials)
        if shutil.which("ss"):  # listening on loopback only, not on every interface
            lines = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout.splitlines()
            local = [cell for line in lines for cell in line.split() if cell.endswith(f":{port}")]
            assert local and all(cell.startswith(("127.0.0.1:", "[::1]:")) for cell in local), local
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
    assert f"http://127.0.0.1:{port}/" in err and "warning" not in err


@pytest.mark.browser
def test_the_dashboard_page_renders_the_study_in_headless_chromium(study_dir: Path) -> None:
    # The single-page app itself, not only its JSON API: the browser runs its scripts, which
    # fetch the study from the journal and draw the best trial and the searched parameter.
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    port = free_port()
    proc = subprocess.Popen([AUTOPROMPT, "dashboard", str(study_dir), "--port", str(port)], stderr=subprocess.DEVNULL)
    try:
        (study,) = wait_for_studies(port)
        page = f"http://127.0.0.1:{port}/dashboard/studies/{study['study_id']}"
        with urllib.request.urlopen(page, timeout=5) as response:
            served = response.read().decode()
        assert "Best Trial" not in served  # the page as served is an empty shell: its scripts draw the rest
        done = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000", "--dump-dom", page],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert "Best Trial (number=2)" in done.stdout, done.stderr[-2000:]  # trial 2 holds the best value, 0.7
    assert "train.lr" in done.stdout and "demo" in done.stdout


def test_exposing_the_dashboard_prints_the_risk() -> None:
    from autoprompt_search.study.dashboard import optuna_dashboard_warning

    assert optuna_dashboard_warning("127.0.0.1", 8080) is None
    warning = optuna_dashboard_warning("0.0.0.0", 8080)
    assert warning is not None and "anyone who can reach that port" in warning and "\n" not in warning
