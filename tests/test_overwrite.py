"""`--overwrite` never loses a finished study, run, export or report: the old directory goes only
once the new one has started (a study, a comparison) or is whole (a run, an export, a report)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoprompt_search.errors import ConfigError
from autoprompt_search.storage.staging import replacing_directory, staged_directory
from cli.main import app

runner = CliRunner()


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (hidden ones included) and the SHA-256 of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_replacing_directory_puts_the_old_one_back_when_the_new_one_fails(tmp_path: Path) -> None:
    out = tmp_path / "study"
    (out / "tune").mkdir(parents=True)
    (out / "trials.parquet").write_bytes(b"old rows")
    before = snapshot(out)
    with pytest.raises(RuntimeError), replacing_directory(out):
        assert not out.exists()  # moved aside: the new study writes in place
        out.mkdir()
        (out / "half-written").write_text("x")
        raise RuntimeError("the new study failed")
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["study"]
    with replacing_directory(out):
        out.mkdir()
        (out / "trials.parquet").write_bytes(b"new rows")
    assert snapshot(out) == {"trials.parquet": hashlib.sha256(b"new rows").hexdigest()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study"]  # nothing left aside


def test_staged_directory_swaps_only_a_whole_new_directory(tmp_path: Path) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (out / "exported.json").write_text("old")
    with pytest.raises(ValueError), staged_directory(out) as staging:
        (staging / "exported.json").write_text("half")
        raise ValueError("failed mid-way")
    assert (out / "exported.json").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["export"]
    with staged_directory(out) as staging:
        (staging / "exported.json").write_text("new")
    assert (out / "exported.json").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["export"]


def finished_study(tiny_model_dir: str, tiny_sst_dir: str, results: Path) -> Path:
    """A study directory as a finished search leaves it (options, table, journal, a checkpoint)."""
    from autoprompt_search.study.options import StudyOptions

    study = results / "quickstart"
    study.mkdir(parents=True)
    StudyOptions(
        name="quickstart",
        space={"methods": {"deep": {"layers": [0], "length": 2}}},
        experiment={"model": tiny_model_dir, "data": {"task": "sst2", "source": "files", "data_dir": tiny_sst_dir}},
    ).save(study)
    (study / "trials.parquet").write_bytes(b"PAR1 finished rows")
    (study / "optuna.journal").write_text('{"op_code": 0}\n')
    (study / "finished.json").write_text('{"finished_at": 1}\n')
    (study / "train" / "t0" / "checkpoint").mkdir(parents=True)
    (study / "train" / "t0" / "checkpoint" / "prompt.safetensors").write_bytes(b"\x00weights")
    return study


def test_overwrite_with_bad_data_keeps_the_finished_study_byte_for_byte(
    tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path
) -> None:
    """The README's main command uses --overwrite: a data folder that fails validation used to exit 2
    after the old study had been removed."""
    results = tmp_path / "results"
    study = finished_study(tiny_model_dir, tiny_sst_dir, results)
    before = snapshot(study)
    bad = tmp_path / "bad-data"
    bad.mkdir()
    (bad / "train.tsv").write_text("sentence\tlabel\ngood film\t7\n")  # a label the task does not have
    res = runner.invoke(
        app,
        ["search", "--name", "quickstart", "--overwrite", "--results-dir", str(results), "--model", tiny_model_dir,
         "--task", "sst2", "--data-dir", str(bad), "--steps", "4", "--num-samples", "1", "--scheduler", "fifo"],
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    assert snapshot(study) == before
    assert sorted(p.name for p in results.iterdir()) == ["quickstart"]


def test_overwrite_of_an_export_or_a_run_never_deletes_a_study(
    tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path
) -> None:
    from autoprompt_search.study.export import export_study
    from autoprompt_search.study.report import write_report

    results = tmp_path / "results"
    study = finished_study(tiny_model_dir, tiny_sst_dir, results)
    before = snapshot(study)
    with pytest.raises(ConfigError, match="holds the study itself"):
        export_study(study, output=results, overwrite=True)
    with pytest.raises(ConfigError, match="holds the study itself"):
        write_report(study, output=results)
    res = runner.invoke(
        app,
        ["train", "--model", tiny_model_dir, "--task", "sst2", "--data-dir", tiny_sst_dir, "--steps", "2",
         "--output", str(results), "--overwrite"],
    )  # fmt: skip
    assert res.exit_code == 2 and "holds the study" in res.stderr and "choose another --output" in res.stderr
    assert snapshot(study) == before


def test_a_report_never_replaces_a_folder_of_other_files(tmp_path: Path) -> None:
    from autoprompt_search.study.report import write_report

    study = tmp_path / "study"
    mine = tmp_path / "my-notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a report"):
        write_report(study, output=mine)
    assert (mine / "todo.txt").read_text() == "keep me"


def test_train_output_under_a_regular_file_is_one_line(tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("a file")
    res = runner.invoke(
        app,
        ["train", "--model", tiny_model_dir, "--task", "sst2", "--data-dir", tiny_sst_dir, "--steps", "2",
         "--output", str(tmp_path / "notes.txt" / "run")],
    )  # fmt: skip
    assert res.exit_code == 2
    assert res.stderr.strip().count("\n") == 0 and "notes.txt' is a file, not a directory" in res.stderr


def test_a_staged_directory_is_readable_by_the_group(tmp_path: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        with staged_directory(tmp_path / "export") as staging:
            (staging / "run").mkdir()
            weights = staging / "run" / "prompt.safetensors"
            weights.write_bytes(b"w")
            weights.chmod(0o600)  # as some writers leave their files
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [tmp_path / "export", *(tmp_path / "export").rglob("*")]}
    assert modes == {"export": 0o755, "run": 0o755, "prompt.safetensors": 0o644}
