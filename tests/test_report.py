"""`autoprompt report`: the figures' numbers come from the table, and the page has its images."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from autoprompt_search.study.options import Objective, StudyOptions
from autoprompt_search.study.records import SCHEMA, write_trials
from autoprompt_search.study.report import finalist_spread, history, layer_effects, write_report

ACC = Objective("dev_score", "max")


def row(number: int, status: str, score: float | None, method: dict, seconds: float, **extra: object) -> dict:
    return {name: None for name in SCHEMA.names} | {
        "trial_id": f"t{number}", "number": number, "status": status, "method": method["name"],
        "config": json.dumps({"method": method, "train": {"lr": 0.01}}), "dev_score": score,
        "worker_seconds": seconds, "trainable_params": 100 * (number + 1), "last_step": 10, "history": "[]",
    } | extra  # fmt: skip


ROWS = [
    row(0, "TERMINATED", 0.70, {"name": "deep", "layers": [0, 1]}, 10.0),
    row(1, "STOPPED", 0.60, {"name": "deep", "layers": [1]}, 5.0),
    row(2, "COLLAPSED", None, {"name": "deep", "layers": [2]}, 7.0),  # costs compute, never scores
    row(3, "TERMINATED", 0.80, {"name": "late", "layer": 2}, 20.0),
    row(4, "TERMINATED", 0.75, {"name": "probe"}, 3.0),
    row(5, "TERMINATED", 0.79, {"name": "late", "layer": 2}, 20.0, finalist_of="t3", seed=2),
    row(6, "ERROR", None, {"name": "late", "layer": 2}, 1.0, finalist_of="t3", seed=3, error="ValueError: boom"),
]


def test_history_counts_every_trials_compute_and_scores_only_the_usable() -> None:
    points = history(ROWS, ACC)
    assert [(p.trial_id, p.value, p.best, p.best_trial, p.compute_seconds) for p in points] == [
        ("t0", 0.70, 0.70, "t0", 10.0), ("t1", 0.60, 0.70, "t0", 15.0), ("t3", 0.80, 0.80, "t3", 42.0),
        ("t4", 0.75, 0.80, "t3", 45.0),
    ]  # fmt: skip


def test_layer_effects_are_means_with_and_without_each_layer() -> None:
    effects = {e["layer"]: e for e in layer_effects(ROWS, ACC, num_layers=4)}
    # trials with a layer set and a score: t0 [0, 1] 0.70, t1 [1] 0.60 (probe, t2 collapsed, and
    # LPT's t3, whose insertion layer is not a prompted layer, excluded)
    assert effects[0]["with"] == pytest.approx(0.70) and effects[0]["without"] == pytest.approx(0.60)
    assert effects[1]["with"] == pytest.approx(0.65) and effects[1]["n_with"] == 2 and effects[1]["without"] is None
    assert effects[2]["n_with"] == 0 and effects[2]["with"] is None


def test_score_by_method_and_the_layer_grid_use_only_scored_searched_trials(tmp_path: Path) -> None:
    from autoprompt_search.study.records import read_trials
    from autoprompt_search.study.report import _layer_grid, method_scores

    write_trials(tmp_path, ROWS)
    rows = read_trials(tmp_path)  # the figures' numbers come from the parquet as written
    # t2 collapsed (no score), t5/t6 are finalist runs of t3: none of them is a point
    assert method_scores(rows, ACC) == {"deep": [0.70, 0.60], "late": [0.80], "probe": [0.75]}
    grid = _layer_grid(rows, ACC, num_layers=3)
    assert grid["trials"] == ["t0", "t1"]  # best first; the probe and LPT have no layer set
    nan = float("nan")
    expected = [[0.70, 0.70, nan], [nan, 0.60, nan]]
    for got, want in zip(grid["cells"], expected, strict=True):
        assert [round(g, 6) if g == g else "nan" for g in got] == [w if w == w else "nan" for w in want]


def test_a_two_objective_study_gets_its_pareto_front(tmp_path: Path) -> None:
    from autoprompt_search.study.report import report_data

    study = tmp_path / "pareto"
    study.mkdir()
    objectives = ["dev_score:max", "trainable_params:min"]
    StudyOptions(
        name="p", space={"methods": {"deep": {}}}, experiment={"model": "minilm-l6"}, objectives=objectives
    ).save(study)
    write_trials(study, ROWS)
    data = report_data(study)
    # searched and scored: t0 (0.70, 100), t1 (0.60, 200), t3 (0.80, 400), t4 (0.75, 500); t1 and t4 are dominated
    assert sorted(data["pareto_all"]) == [[0.6, 200], [0.7, 100], [0.75, 500], [0.8, 400]]
    assert sorted(data["pareto"]) == [[0.7, 100], [0.8, 400]]
    page = write_report(study)
    assert "pareto.png" in re.findall(r"<img src='([^']+)'", page.read_text(encoding="utf-8"))


def test_finalist_spread_keeps_failed_seeds_as_none() -> None:
    assert finalist_spread(ROWS, ACC) == {"t3": [0.79, None]}


def test_the_page_has_its_images_and_lists_failures(tmp_path: Path) -> None:
    study = tmp_path / "demo"
    study.mkdir()
    StudyOptions(name="demo", space={"methods": {"deep": {}}}, experiment={"model": "minilm-l6"}).save(study)
    write_trials(study, ROWS)
    page = write_report(study)
    text = page.read_text(encoding="utf-8")
    images = re.findall(r"<img src='([^']+)'", text)
    assert {"history.png", "layer_effect.png", "layer_heatmap.png", "methods.png", "finalists.png"} <= set(images)
    for name in images:
        assert (page.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<script src" not in text and "http" not in text  # static: one inline sort script, no network
    # The answer first: the best configuration (finalists' median over seeds, a failed seed the
    # worst value) with its whole configuration; then every run with its configuration.
    table = text[text.index("<table class='sortable'>") :]
    assert table.count("<tr>") == 1 + len(ROWS) and "method: name=late, layer=2; train: lr=0.01" in table
    head = text[text.index("<div class='best'>") : text.index("</div>")]  # t3's seed 3 failed: no median
    assert "Best configuration</b> (trial t3): dev_score 0.8000 from one run (no finalists" in head
    both = [r if r["trial_id"] != "t6" else {**r, "status": "TERMINATED", "dev_score": 0.77, "test_score": 0.7,
                                              "error": None} for r in ROWS]  # fmt: skip
    write_trials(study, both)
    head = write_report(study).read_text(encoding="utf-8").split("<div class='best'>")[1].split("</div>")[0]
    assert "Best configuration</b> (trial t3): median dev_score 0.7800 [0.7700-0.7900] over 2 of 2 fresh" in head
    assert "name: late" in head and "layer: 2" in head and "test median 0.7000" in head
    assert "ValueError: boom" in text and "collapsed: every evaluation predicted a single class" in text
    assert "importances need at least 3" in text or "no Optuna journal yet" in text


def test_status_and_report_say_why_trials_stopped(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    study = tmp_path / "asha"
    study.mkdir()
    StudyOptions(
        name="asha",
        space={"methods": {"deep": {}}},
        experiment={"model": "minilm-l6"},
        reduction_factor=4,
        grace_period=2,
    ).save(study)
    write_trials(study, ROWS)  # t1 STOPPED
    res = CliRunner().invoke(app, ["status", str(study)])
    assert res.exit_code == 0, res.output
    why = "STOPPED: 1 trial(s) ended early by ASHA: at a rung (every 4x more evaluations, the first after 2)"
    assert why in " ".join(res.stdout.split())  # rich wraps long lines
    assert "below the top 1/4" in " ".join(res.stdout.split())
    assert why in write_report(study).read_text(encoding="utf-8")
    write_trials(study, [r for r in ROWS if r["status"] != "STOPPED"])
    assert "STOPPED:" not in CliRunner().invoke(app, ["status", str(study)]).stdout


def test_importances_come_from_the_studys_own_journal(tmp_path: Path) -> None:
    """PED-ANOVA over the journal's COMPLETE trials: the parameter the score depends on ranks first."""
    import optuna

    from autoprompt_search.study.journal import journal_storage
    from autoprompt_search.study.report import importances

    study = tmp_path / "imp"
    study.mkdir()
    options = StudyOptions(name="imp", space={"methods": {"deep": {}}}, experiment={"model": "minilm-l6"})
    options.save(study)
    journal = optuna.create_study(
        study_name="imp", storage=journal_storage(study / "optuna.journal"), direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )  # fmt: skip

    def objective(trial: optuna.Trial) -> float:
        lr, length = trial.suggest_float("train.lr", 1e-3, 1e-1, log=True), trial.suggest_int("method.length", 2, 64)
        return -abs(math.log10(lr) + 2) + 1e-4 * length  # the score is the learning rate's, little the length's

    journal.optimize(objective, n_trials=30)
    for trial in journal.trials[:5]:  # told from a --warm-start study: not this study's importances
        journal.add_trial(
            optuna.trial.create_trial(
                params=trial.params, distributions=trial.distributions, value=trial.value,
                user_attrs={"warm_start_from": f"other#{trial.number}"},
            )
        )  # fmt: skip
    values, note = importances(study, options)
    assert next(iter(values)) == "train.lr" and values["train.lr"] > 0.5 > values["method.length"], values
    assert "over the 30 completed Optuna trials" in note
    write_trials(study, ROWS)
    page = write_report(study)
    assert "importances.png" in re.findall(r"<img src='([^']+)'", page.read_text(encoding="utf-8"))


# Appended to a copy of the page in the test only (the report itself has no script): after load,
# the title lists images that did not decode and any script error the page raised.
PROBE = """<script>
const errors = [];
window.addEventListener('error', e => errors.push(e.message));
window.addEventListener('load', () => {
  const bad = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'));
  document.title = 'probe images=' + document.images.length + ' bad=[' + bad.join(',') + '] errors=[' + errors.join('|') + ']';
});
</script>"""


@pytest.mark.browser
def test_the_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    study = tmp_path / "demo"
    study.mkdir()
    StudyOptions(name="demo", space={"methods": {"deep": {}}}, experiment={"model": "minilm-l6"}).save(study)
    write_trials(study, ROWS)
    page = write_report(study)
    probed = page.with_name("probed.html")
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000", "--dump-dom",
         probed.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    title = re.search(r"<title>([^<]*)</title>", done.stdout)
    assert title is not None, done.stderr[-2000:]
    count = len(re.findall(r"<img src=", page.read_text(encoding="utf-8")))
    assert title.group(1) == f"probe images={count} bad=[] errors=[]" and count >= 5
