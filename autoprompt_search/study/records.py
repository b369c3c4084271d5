"""`trials.parquet`: one row per trial, rewritten atomically on every trial event.

A Ray Tune callback in the driver keeps the rows; the file is the study's source of truth for
`status` and `export` and survives interruption (rows are keyed by trial id, so a resumed
trial updates its row instead of adding one).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from ray.tune import Callback

from autoprompt_search.errors import ConfigError
from autoprompt_search.storage.tables import read_table, write_table
from autoprompt_search.study.journal import current_study_dir
from autoprompt_search.study.options import StudyOptions
from autoprompt_search.study.space import sampled_of
from autoprompt_search.study.trial import TRAIN_DIR
from autoprompt_search.training.metrics import COLLAPSED

TRIALS_FILE = "trials.parquet"
# A run's last report when it has no result (trial.run_ended): COLLAPSED or ERROR, and the reason.
RUN_STATUS, RUN_ERROR = "run_status", "run_error"
ENDED = ("TERMINATED", "STOPPED", "ERROR", "COLLAPSED")
SCHEMA = pa.schema(
    [
        ("trial_id", pa.string()),  # Tune trial id; fused members: <group trial id>-<member index>
        ("group_id", pa.string()),  # fused studies: the Tune trial (one Train job) that trained this member
        ("number", pa.int64()),  # order in which trials started
        # RUNNING, TERMINATED (all steps), STOPPED (early), ERROR, COLLAPSED (every evaluation one class)
        ("status", pa.string()),
        ("finalist_of", pa.string()),  # finalist runs: the searched trial whose configuration this retrains
        ("seed", pa.int64()),  # finalist runs: the training seed
        ("method", pa.string()),
        ("config", pa.string()),  # JSON: the sampled {'method': ..., 'train': ...}
        ("dev_score", pa.float64()),  # best dev score (the checkpointed state); never a collapsed one
        ("eval_score", pa.float64()),  # dev score at the last evaluation
        ("test_score", pa.float64()),  # finalist runs: the best state's score on the test split (never selects)
        ("collapsed_evals", pa.int64()),  # evaluations that predicted a single class
        ("trainable_params", pa.int64()),
        ("evaluations", pa.int64()),
        ("last_step", pa.int64()),
        ("history", pa.string()),  # JSON list: one dict per evaluation (metrics over time)
        ("startup_seconds", pa.float64()),  # driver trial start -> Train worker loop start (Ray's cost)
        ("trial_actor_seconds", pa.float64()),  # ...of which: driver trial start -> Tune trial function entered
        ("load_seconds", pa.float64()),  # worker: loading model + data
        ("worker_seconds", pa.float64()),  # worker: loading + training + evaluation
        ("wall_seconds", pa.float64()),  # driver: trial start to end, Train-job start included
        ("device_seconds", pa.float64()),  # wall_seconds x devices held (GPUs, else CPUs)
        ("gpu_ids", pa.string()),  # Ray GPU ids the trial's workers held ("" on CPU)
        ("checkpoint", pa.string()),  # directory with prompt.safetensors + config.json
        ("error", pa.string()),
        ("started_at", pa.float64()),  # unix time
        ("finished_at", pa.float64()),
    ]
)
HISTORY_KEYS = (
    "step", "eval_score", "eval_accuracy", "eval_collapsed", "dev_score", "train_loss", "worker_seconds",
    "resumed_from_step",
)  # fmt: skip


def error_line(text: str) -> str:
    """The root cause of a Ray error trace: our own error if present, else the last `...Error: ...` line."""
    lines = [ln.strip() for ln in text.splitlines() if re.match(r"^\s*[\w.]*(Error|Exception)\b.*:", ln)]
    ours = [ln for ln in lines if "TrainingError" in ln or "ConfigError" in ln]
    chosen = (ours or lines or [text.strip().splitlines()[-1] if text.strip() else "unknown error"])[-1]
    return chosen[:500]


def trial_error_text(trial: Any) -> str:
    """The trial's error trace: the driver's local copy (written before callbacks run), else storage."""
    local = trial.error_file
    if local and Path(local).is_file():
        return Path(local).read_text(encoding="utf-8", errors="replace")
    error = trial.get_error()
    return str(error) if error is not None else "unknown error (see the Ray logs under /tmp/ray)"


def read_trials(study_dir: str | Path) -> list[dict[str, Any]]:
    """The table's rows, with each checkpoint a path under `study_dir` (wherever the study is now)."""
    path = Path(study_dir) / TRIALS_FILE
    if not path.is_file():
        return []
    rows = read_table(path, "study", "the study directory is corrupt")
    for row in rows:
        row["checkpoint"] = resolved_path(row["checkpoint"], Path(study_dir))
    return rows


def stored_path(path: str | None, study_dir: Path) -> str | None:
    """A path as the table stores it: relative to the study directory, so a copied or moved study
    reads its own files (a path outside the study, say on other storage, stays as it is)."""
    if not path or not Path(path).is_absolute():
        return path
    relative = os.path.relpath(path, study_dir.absolute())
    return path if relative.startswith("..") else relative


def resolved_path(stored: str | None, study_dir: Path) -> str | None:
    """The stored path under `study_dir`. A table written before paths were relative holds the
    absolute path of where the study was: its part from `train/` on is taken under `study_dir`."""
    if not stored:
        return stored
    path = Path(stored)
    if not path.is_absolute():
        return str(study_dir / path)
    if TRAIN_DIR in path.parts and not path.is_relative_to(study_dir.absolute()):
        parts = path.parts
        start = len(parts) - 1 - parts[::-1].index(TRAIN_DIR)
        return str(study_dir.joinpath(*parts[start:]))
    return stored


def extend_history(history_json: str | None, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The history with `entry` appended, dropping entries at or after its step (a run restarted
    from a checkpoint, or from scratch, reports those steps again)."""
    history = json.loads(history_json or "[]")
    step = entry.get("step")
    if step is not None:
        history = [h for h in history if h.get("step") is None or h["step"] < step]
    return [*history, entry]


def recorded_row(study_dir: str | Path, trial_id: str) -> dict[str, Any] | None:
    """The table's row for `trial_id` (None when absent or the file is not readable from here)."""
    try:
        rows = pq.read_table(Path(study_dir) / TRIALS_FILE).to_pylist()
    except (OSError, pa.ArrowException):
        return None
    return next((r for r in rows if r["trial_id"] == trial_id), None)


def write_trials(study_dir: str | Path, rows: list[dict[str, Any]]) -> None:
    stored = [{**r, "checkpoint": stored_path(r.get("checkpoint"), Path(study_dir))} for r in rows]
    write_table(Path(study_dir) / TRIALS_FILE, sorted(stored, key=lambda r: r["number"]), SCHEMA)


class TrialRecorder(Callback):
    """Tune callback keeping `trials.parquet` current (picklable: Tune saves it with the experiment)."""

    def __init__(self, study_dir: str, devices_per_trial: float) -> None:
        self.study_dir = study_dir
        self.devices_per_trial = devices_per_trial
        self.rows: dict[str, dict[str, Any]] = {}

    def setup(self, **info: Any) -> None:
        self.study_dir = str(current_study_dir(self.study_dir))  # a resumed study may have moved
        self.rows = {r["trial_id"]: r for r in read_trials(self.study_dir)}

    def _row(self, trial: Any) -> dict[str, Any]:
        if trial.trial_id not in self.rows:
            sampled = sampled_of(trial.config)
            self.rows[trial.trial_id] = {
                **{name: None for name in SCHEMA.names},
                "trial_id": trial.trial_id,
                "number": len(self.rows),
                "method": sampled["method"].get("name"),
                "config": json.dumps(sampled, sort_keys=True),
            }
        return self.rows[trial.trial_id]

    def _member_rows(self, trial: Any) -> list[dict[str, Any]]:
        """Fused studies: one row per member of the group `trial`."""
        out = []
        for index, member in enumerate(trial.config["members"]):
            key = f"{trial.trial_id}-{index}"
            if key not in self.rows:
                sampled = sampled_of(member)
                self.rows[key] = {
                    **{name: None for name in SCHEMA.names},
                    "trial_id": key,
                    "group_id": trial.trial_id,
                    "number": len(self.rows),
                    "method": sampled["method"].get("name"),
                    "config": json.dumps(sampled, sort_keys=True),
                }
                if member.get("finalist_of"):
                    self.rows[key].update(finalist_of=member["finalist_of"], seed=sampled["train"].get("seed"))
            out.append(self.rows[key])
        return out

    def _rows(self, trial: Any) -> list[dict[str, Any]]:
        return self._member_rows(trial) if "members" in trial.config else [self._row(trial)]

    def _ended(self, trial: Any) -> bool:
        """A trial the table already holds as ended: after a driver crash, Tune's saved state
        (written every few seconds) may call it unfinished and run it again; its row stays."""
        row = self.rows.get(trial.trial_id)
        return row is not None and row["status"] in ENDED

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self._ended(trial):
            return
        for row in self._rows(trial):
            if row["status"] in ENDED:  # a resumed group keeps its ended members
                continue
            # A restarted trial (Tune retry, resumed study) keeps its history: its run continues
            # from its last checkpoint, and later reports replace what came after it.
            row.update(status="RUNNING", started_at=time.time(), finished_at=None, error=None)
            row.update(startup_seconds=None, trial_actor_seconds=None)
        self._write()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if "member" in result:
            self._member_result(trial, result)
            return
        if self._ended(trial):
            return
        row = self._row(trial)
        if result.get(RUN_STATUS):  # its last report: it collapsed, or its configuration failed
            row.update(status=result[RUN_STATUS], error=result[RUN_ERROR])
            self._finish_times(row, final=True)
            self._write()
            return
        self._evaluation(row, result, result.get("checkpoint_path"))

    def _member_result(self, trial: Any, result: dict[str, Any]) -> None:
        row = self._member_rows(trial)[int(result["member"])]
        if result.get("member_final") and row["status"] in ENDED:
            return  # its end is recorded (a resumed group, or the group failing after it ended)
        if result.get("member_final"):
            row.update(status=result["member_status"], error=result.get("member_error") or None)
            row["test_score"] = result.get("test_score")
            self._finish_times(row, final=True)
            self._write()
            return
        self._evaluation(row, result, result.get("member_checkpoint"))

    def _evaluation(self, row: dict[str, Any], result: dict[str, Any], checkpoint: str | None) -> None:
        """One evaluation report of a trial or member: its history, scores, timings, checkpoint."""
        entry = {k: result[k] for k in HISTORY_KEYS if k in result}
        if entry.get("dev_score") is not None and not math.isfinite(entry["dev_score"]):
            entry["dev_score"] = None  # -inf: only collapsed evaluations so far, no best
        history = extend_history(result.get("restored_history") or row["history"], entry)
        best = result.get("dev_score")
        row.update(
            history=json.dumps(history),
            evaluations=len(history),
            collapsed_evals=sum(bool(h.get("eval_collapsed")) for h in history),
            last_step=result.get("step"),
            dev_score=best if best is not None and math.isfinite(best) else None,  # -inf: no best yet
            eval_score=result.get("eval_score"),
            trainable_params=result.get("trainable_params"),
            load_seconds=result.get("load_seconds"),
            worker_seconds=result.get("worker_seconds"),
            gpu_ids=result.get("gpu_ids"),
        )
        if result.get("worker_started_at") and row["started_at"]:
            row["startup_seconds"] = result["worker_started_at"] - row["started_at"]
            row["trial_actor_seconds"] = result["trial_entered_at"] - row["started_at"]
        if checkpoint:
            row["checkpoint"] = checkpoint
        self._finish_times(row)
        self._write()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if "members" in trial.config:
            self._close_members(trial, "the fused group ended before this member reported its end")
            return
        if self._ended(trial):
            return
        row = self._row(trial)
        row["status"] = "TERMINATED" if trial.last_result.get("trained_to_end") else "STOPPED"
        if row["evaluations"] and row["collapsed_evals"] == row["evaluations"]:  # e.g. stopped by ASHA
            row.update(status="COLLAPSED", error=COLLAPSED)
        self._finish_times(row, final=True)
        self._write()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = error_line(trial_error_text(trial))
        if "members" in trial.config:
            self._close_members(trial, error)
            return
        if self._ended(trial):
            return
        row = self._row(trial)
        row["status"] = "ERROR"
        row["error"] = error
        self._finish_times(row, final=True)
        self._write()

    def _close_members(self, trial: Any, error: str) -> None:
        for row in self._member_rows(trial):
            if row["status"] == "RUNNING":
                row.update(status="ERROR", error=error)
                self._finish_times(row, final=True)
        self._write()

    def _finish_times(self, row: dict[str, Any], final: bool = False) -> None:
        now = time.time()
        if final:
            row["finished_at"] = now
        if row["started_at"] is not None:
            row["wall_seconds"] = now - row["started_at"]
            row["device_seconds"] = row["wall_seconds"] * self.devices_per_trial

    def _write(self) -> None:
        write_trials(self.study_dir, list(self.rows.values()))


def study_rows(study_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a study directory (one that has started), for status, export and reports."""
    path = Path(study_dir)
    StudyOptions.load(path)
    if not (path / TRIALS_FILE).is_file():
        raise ConfigError(
            f"study: {str(path)!r} has no {TRIALS_FILE} yet (no trial has started); resume it with "
            f"autoprompt search --resume {path}"
        )
    return read_trials(path)


def optuna_numbers(study_dir: str | Path, name: str) -> dict[str, int]:
    """Tune trial id -> its Optuna trial number (what optuna-dashboard shows; the two differ where
    the budget refused draws or a --warm-start study added trials); empty without a journal."""
    from autoprompt_search.study.journal import OPTUNA_FILE, open_study

    journal = Path(study_dir) / OPTUNA_FILE
    if not journal.is_file():
        return {}
    trials = open_study(str(journal), name).trials
    return {t.user_attrs["tune_trial_id"]: t.number for t in trials if "tune_trial_id" in t.user_attrs}
