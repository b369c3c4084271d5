"""A Ray Tune searcher that hands each Tune trial a fused group of K Optuna trials.

`OptunaSearch` maps one Tune trial to one Optuna trial. With `--fuse K` a Tune trial is one Ray
Train job training K configurations together, so this searcher asks Optuna for K trials at once
(the same define-by-run space, sampler and journal storage as the unfused path) and puts them in
the Tune trial's config as `members`. Each member's intermediate values and pruning decisions go
to Optuna from the Train worker itself (`fused_trial.py`; the pruner must answer during training),
through the same journal file: Optuna's storage is built for several processes, and the study
directory is already where every Train worker writes its checkpoints. The member's end is told
here, from its final report (COMPLETE with its objective values, PRUNED when the pruner stopped it,
FAIL when it failed or its Train job died), on the same driver event that closes its row.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from autoprompt_search.study.budget import MAX_DRAWS, ParamBudget
from autoprompt_search.study.journal import open_study, study_journal


class GroupSearcher(Searcher):
    """Asks Optuna for `group_size` trials per Tune trial, `num_samples` Optuna trials in all."""

    def __init__(
        self,
        space: Any,
        sampler: Any,
        storage_path: str,
        study_name: str,
        directions: list[str],
        metrics: list[str],
        num_samples: int,
        group_size: int,
        metric: str,
        mode: str,
        budget: ParamBudget | None = None,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self.budget = budget  # draws over it are PRUNED and drawn again (budget.py)
        self.space, self.sampler = space, sampler
        self.storage_path, self.study_name, self.directions = storage_path, study_name, directions
        self.metrics = metrics  # the objectives' metric names, in order
        self.num_samples, self.group_size = num_samples, group_size
        self.asked = 0
        self.groups: dict[str, list[int]] = {}  # Tune trial id -> Optuna trial numbers
        self._study: Any = None
        self._live: dict[int, Any] = {}  # Optuna trial number -> its running optuna.Trial (not pickled)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        self._metric, self._mode = metric or self._metric, mode or self._mode
        return True  # the space is Optuna's define-by-run function, not Tune's param_space

    @property
    def study(self) -> Any:
        if self._study is None:
            self._study = open_study(self.storage_path, self.study_name, self.sampler, directions=self.directions)
        return self._study

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if trial_id in self.groups:  # a restored trial asks again: same members
            return None
        if self.asked >= self.num_samples:
            return Searcher.FINISHED  # type: ignore[return-value]
        members = []
        for _ in range(min(self.group_size, self.num_samples - self.asked)):
            trial, sampled = self._draw()
            # What optuna-dashboard shows beside the parameters: which row of trials.parquet this is.
            trial.set_user_attr("tune_trial_id", f"{trial_id}-{len(members)}")
            trial.set_user_attr("method", sampled["method"]["name"])
            self._live[trial.number] = trial
            members.append({"number": trial.number, **sampled})
            self.asked += 1
        self.groups[trial_id] = [m["number"] for m in members]
        return {"members": members}

    def _draw(self) -> tuple[Any, dict[str, Any]]:
        """A new Optuna trial and its configuration, within the budget where there is one."""
        from optuna.trial import TrialState

        for _ in range(MAX_DRAWS):
            trial = self.study.ask()
            sampled = self.space(trial)
            if self.budget is None or self.budget.admits(trial, sampled):
                return trial, sampled
            trial.set_user_attr("method", sampled["method"]["name"])
            self.study.tell(trial, state=TrialState.PRUNED)  # never trained: over the budget
        raise self.budget.exhausted(MAX_DRAWS)  # type: ignore[union-attr]

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """A member's final report: tell Optuna how it ended."""
        from optuna.trial import TrialState

        if not result.get("member_final"):
            return
        number = int(result["optuna_number"])
        values = [result.get(m) for m in self.metrics]
        status = result["member_status"]
        live = self._live.pop(number, None)
        if live is not None and result.get("trainable_params") is not None:
            live.set_user_attr("trainable_params", int(result["trainable_params"]))
        if status in ("ERROR", "COLLAPSED") or any(v is None or not math.isfinite(float(v)) for v in values):
            self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        elif status == "STOPPED" and len(self.metrics) == 1:
            self.study.tell(number, state=TrialState.PRUNED, skip_if_finished=True)  # its last reported value
        else:
            self.study.tell(number, [float(v) for v in values], skip_if_finished=True)  # type: ignore[arg-type]

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        """Members whose Train job ended without their final report (it died) are failed in Optuna."""
        from optuna.trial import TrialState

        if not error:
            return
        for number in self.groups.get(trial_id, []):
            if self.study.trials[number].state == TrialState.RUNNING:
                self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)

    def save(self, checkpoint_path: str) -> None:
        # Tune's own searcher checkpoint (pickle, written and read by this study only): the sampler's
        # random state must survive a resume, or a seeded sampler proposes its first trials again.
        state = {"asked": self.asked, "groups": self.groups, "sampler": self.sampler}
        Path(checkpoint_path).write_bytes(pickle.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        state = pickle.loads(Path(checkpoint_path).read_bytes())
        self.asked, self.groups, self.sampler = int(state["asked"]), dict(state["groups"]), state["sampler"]
        self.storage_path = str(study_journal(self.storage_path))
        self._study, self._live = None, {}

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_study", "_live")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.storage_path = str(study_journal(self.storage_path))
        self._study, self._live = None, {}
