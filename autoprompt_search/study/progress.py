"""Live progress of a study in the terminal: trials done, running, failed, best so far."""

from __future__ import annotations

import math
import sys
from typing import Any

from ray.tune import Callback

from autoprompt_search.study.records import RUN_STATUS


def failed(trial: Any) -> bool:
    """Ray failed the trial, or its run reported that its configuration failed (said as data)."""
    return trial.status == "ERROR" or (trial.last_result or {}).get(RUN_STATUS) == "ERROR"


class ProgressBar(Callback):
    """A rich progress bar on a terminal; one line per finished trial otherwise (logs, CI)."""

    def __init__(self, total: int, objective: str, mode: str) -> None:
        self.total, self.objective, self.mode = total, objective, mode
        self._bar: Any = None
        self._task: Any = None
        self._failing = False

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks with the experiment
        return {
            "total": self.total,
            "objective": self.objective,
            "mode": self.mode,
            "_bar": None,
            "_task": None,
            "_failing": False,
        }

    def _summary(self, trials: list, ending: Any = None) -> tuple[int, str]:
        # Callbacks run before Tune updates the ending trial's status: count it as finished.
        finished = [t for t in trials if t.status in ("TERMINATED", "ERROR") or t is ending]
        done = len(finished)
        running = sum(t.status == "RUNNING" and t is not ending for t in trials)
        failures = sum(failed(t) for t in trials if t is not ending) + (ending is not None and self._failing)
        values = [(t.last_result or {}).get(self.objective) for t in trials]
        values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]  # NaN: failed
        best = (max(values) if self.mode == "max" else min(values)) if values else None
        best_text = f"{best:.4g}" if isinstance(best, (int, float)) else "-"
        return done, f"best {self.objective} {best_text} · {running} running · {failures} failed"

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if not sys.stderr.isatty():
            return
        done, text = self._summary(trials)
        if self._bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("trials"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(text, total=self.total)
        self._bar.update(self._task, completed=done, description=text)

    def _line(self, trials: list, trial: Any, what: str) -> None:
        if sys.stderr.isatty():
            return
        self._failing = what == "failed"
        done, text = self._summary(trials, trial)
        print(f"[{done}/{self.total}] trial {trial.trial_id} {what} · {text}", file=sys.stderr, flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trials, trial, "failed" if failed(trial) else "finished")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trials, trial, "failed")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._bar is not None:
            done, text = self._summary(trials)
            self._bar.update(self._task, completed=done, description=text)
            self._bar.stop()
            self._bar = None


class FinalistProgress(Callback):
    """One line per finalist run as it ends: `[k/n] finalist of <trial> seed <s> · dev <x> · test <y>`
    (the finalists train as fused groups, so a group's Tune trial ends only with its last member)."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if not result.get("member_final"):
            return
        self.done += 1
        member = trial.config["members"][int(result["member"])]
        dev, test = result.get("dev_score"), result.get("test_score")
        scores = " · ".join(
            f"{name} {value:.4f}" for name, value in (("dev", dev), ("test", test)) if isinstance(value, float)
        )
        status = result.get("member_status", "")
        print(
            f"[{self.done}/{self.total}] finalist of {member.get('finalist_of')} seed {member['train'].get('seed')}"
            f" {status} · {scores or 'no score'}",
            file=sys.stderr,
            flush=True,
        )
