"""A fused study trial: one Ray Train job training a group of K Optuna trials together.

The Tune trial's config holds `members` (from `GroupSearcher`). The Train worker partitions them
into fused groups (`fused.partition`: same batching, nearby first layers and lengths), trains
each with `train_group` over one loaded backbone, and for every member evaluation:
- reports the value to the member's Optuna trial and asks its pruner (Optuna's successive halving
  = ASHA, when the study has one objective and uses ASHA): a pruned member leaves the batch, the
  group goes on;
- writes the member's best state, trained configuration and training state to
  `<train>/<trial>/members/<k>/` (the table points at it once it improved; a restart resumes from it);
- reports to Tune with the member's index, so `trials.parquet` keeps one row per member.
When a member ends, a final report carries its status and objective values; the driver's
`GroupSearcher` tells Optuna from that report (the same event that closes its row), so Optuna and
`trials.parquet` agree after any interruption. On resume, members Optuna already knows as finished
are not retrained. A configuration that cannot be fused (an SPT-DARTS search) trains alone.

Finalist runs (`finalists.py`) are groups of the same kind whose members name `finalist_of`: they
keep the test split and report each member's test score, are not Optuna trials (no pruning, no
values told), and a resumed group skips the members `trials.parquet` holds as ended.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from autoprompt_search.study.trial import (
    RESTORED_HISTORY,
    TrialPayload,
    WorkerTask,
    configuration_failures,
    evaluation_metrics,
    make_trainer,
    place,
    restored_history,
)

if TYPE_CHECKING:
    import torch

    from autoprompt_search.config import ExperimentConfig


def member_id(trial_id: str, index: int) -> str:
    """The row id of member `index` of Tune trial `trial_id` in trials.parquet."""
    return f"{trial_id}-{index}"


def run_group(config: dict[str, Any], study: TrialPayload) -> None:
    """Tune function trainable for a fused group."""
    make_trainer(group_worker, config, study).fit()


def _broadcast(value: bool) -> bool:
    """Rank 0's decision on every rank (members must leave the batch together)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def group_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker loop: train the group's members fused and report each one."""
    ended: set[int] = set()  # members whose final report was sent
    # e.g. the group's batch does not fit in memory: every member still open ends ERROR
    with configuration_failures(lambda reason: _fail_open_members(loop_config, ended, reason)):
        _train_group_and_report(loop_config, ended)


def member_keys(loop_config: dict[str, Any], index: int) -> dict[str, Any]:
    """What names a member in each of its reports: its index, table row id and Optuna trial."""
    task: WorkerTask = loop_config["task"]
    member = task.sampled["members"][index]
    return {
        "member": index,
        "member_id": member_id(task.trial_id, index),
        "optuna_number": member.get("number"),
    }


def _fail_open_members(loop_config: dict[str, Any], ended: set[int], reason: str) -> None:
    import ray.train

    for index in range(len(loop_config["task"].sampled["members"])):
        if index not in ended:
            failure = {
                "member_final": True,
                "member_status": "ERROR",
                "member_error": reason,
                "dev_score": float("nan"),
            }
            ray.train.report({**member_keys(loop_config, index), **failure})


class GroupReporter:
    """One fused group's members as Ray Train reports them: each evaluation (with its checkpoint,
    its Optuna intermediate value and pruning decision), each member's final result, and where a
    member continues after a restart."""

    def __init__(self, loop_config: dict[str, Any], members: list[dict[str, Any]], load_seconds: float) -> None:
        import ray.train

        from autoprompt_search.study.journal import open_study

        self.loop_config, self.members, self.load_seconds = loop_config, members, load_seconds
        self.started, self.started_at = time.perf_counter() - load_seconds, time.time() - load_seconds
        self.task: WorkerTask = loop_config["task"]
        self.finalists = any(m.get("finalist_of") for m in members)
        self.rank = ray.train.get_context().get_world_rank()
        study = self.task.study
        searching = self.rank == 0 and not self.finalists
        self.optuna = open_study(study.optuna_storage, study.study, pruner=_pruner(study)) if searching else None
        self.single_objective = len(study.objectives) == 1  # Optuna's report and pruners are single-objective
        self.out = self.task.run_dir / "members"
        self.gpu_ids: list[str] = []
        self.evaluations = [0] * len(members)
        self.last: dict[int, dict[str, Any]] = {}  # member -> its latest report (objective values for the end)
        self.resumed: dict[int, Any] = {}  # member -> the TrainingState it continued from, until its first report
        self.resumed_from: dict[int, int] = {}  # member -> the step it continued from after a restart

    def finished(self, index: int) -> bool:
        """Resume: Optuna (finalists: the table) already holds this member's result."""
        from optuna.trial import TrialState

        from autoprompt_search.study.records import ENDED, recorded_row

        if self.finalists:
            row = recorded_row(self.task.study.study_dir, member_id(self.task.trial_id, index))
            return row is not None and row["status"] in ENDED
        if self.optuna is None:
            return False
        return self.optuna.trials[self.members[index]["number"]].state != TrialState.RUNNING

    def common(self, index: int) -> dict[str, Any]:
        return {
            **member_keys(self.loop_config, index),
            "load_seconds": self.load_seconds,
            "worker_seconds": time.perf_counter() - self.started,
            "worker_started_at": self.started_at,
            "trial_entered_at": self.task.trial_entered_at,
            "gpu_ids": ",".join(self.gpu_ids),
            "resumed_from_step": self.resumed_from.get(index, 0),
        }

    def resume(self, indices: list[int], cfgs: list[ExperimentConfig]) -> tuple[list[ExperimentConfig], dict[int, Any]]:
        """After a worker crash Ray Train restarts the job: members continue from their last
        evaluation. Returns the group's configurations (SPT-DARTS: the derived layers, no new
        search) and the training state of each member that has one (by position in the group)."""
        from autoprompt_search.storage.checkpoint import resume_from

        group_cfgs, resume = [], {}
        for j, i in enumerate(indices):
            cfg, state = resume_from(self.out / str(i), cfgs[i])
            group_cfgs.append(cfg)
            if state is not None:
                resume[j] = state
                self.evaluations[i] = len(state.meta["history"])
                self.resumed[i] = state
                self.resumed_from[i] = int(state.meta["step"])
        return group_cfgs, resume

    def evaluated(
        self, index: int, record: dict[str, Any], state: dict[str, torch.Tensor], trained: ExperimentConfig
    ) -> bool:
        """Report member `index`'s evaluation; returns whether it is to leave the batch (pruned)."""
        import ray.train

        from autoprompt_search.storage.checkpoint import save_state, save_training_state

        self.evaluations[index] += 1
        metrics = {**self.common(index), **evaluation_metrics(record, state, trained)}
        if index in self.resumed:  # its first report after a restart: the evaluations before it
            metrics[RESTORED_HISTORY] = restored_history(self.resumed.pop(index))
        prune = False
        if self.optuna is not None and self.single_objective:  # intermediate values with or without ASHA
            trial = _optuna_trial(self.optuna, self.members[index]["number"])
            trial.report(record["eval_score"], self.evaluations[index])
            prune = self.task.study.prune and trial.should_prune()
        if self.rank == 0:
            # The best state and the configuration trained (SPT-DARTS: the derived one) with the
            # training state: the member resumes from here after a crash.
            path = self.out / str(index)
            save_state(state, trained, path, {"dev_score": record["best_score"], "step": record["best_step"]}, [])
            save_training_state(record["training_state"](), path)
            if record["improved"]:
                metrics["member_checkpoint"] = str(path)
        self.last[index] = metrics
        ray.train.report(metrics)
        return _broadcast(prune)

    def final(self, index: int, result: Any) -> None:
        """Report member `index`'s end: its status, best dev score and (finalists) test score."""
        import ray.train

        final = {
            **self.last.get(index, {}),
            **self.common(index),
            "member_final": True,
            "member_status": result.status,
            "member_error": result.error or "",
            # Tune wants the metric in every result; NaN (Optuna: failed) where there is no best
            "dev_score": float("nan")
            if result.status == "COLLAPSED"
            else result.metrics["dev"].get("score", float("nan")),
            "trainable_params": result.metrics["trainable_params"],
        }
        if "test" in result.metrics:  # finalists: the best state on the test split
            final["test_score"] = result.metrics["test"]["score"]
        ray.train.report(final)


def _train_group_and_report(loop_config: dict[str, Any], ended: set[int]) -> None:
    from autoprompt_search.backbones import BackboneInfo
    from autoprompt_search.study.space import experiment_for
    from autoprompt_search.training.fused import fusable, partition
    from autoprompt_search.training.fused_loop import train_group
    from autoprompt_search.training.workspace import prepare_workspace

    started = time.perf_counter()
    task: WorkerTask = loop_config["task"]
    members: list[dict[str, Any]] = task.sampled["members"]
    cfgs = [experiment_for(task.study.experiment, m) for m in members]
    gpu_ids = [place(cfg, task.use_gpu) for cfg in cfgs][-1]  # every member on this worker's device
    ws = prepare_workspace(cfgs[0])
    reporter = GroupReporter(loop_config, members, time.perf_counter() - started)
    reporter.gpu_ids = gpu_ids
    if not reporter.finalists:
        ws.splits.pop("test", None)  # a search selects on dev only
    todo = [i for i in range(len(members)) if not _broadcast(reporter.finished(i))]
    ended.update(i for i in range(len(members)) if i not in todo)
    text_tokens = float(ws.splits["train"].lengths.float().mean())
    for group in partition([cfgs[i] for i in todo], BackboneInfo.of(ws.backbone), len(todo), text_tokens):
        indices = [todo[j] for j in group]

        def on_eval(j: int, record: dict[str, Any], state: Any, trained: Any, indices: list[int] = indices) -> bool:
            return reporter.evaluated(indices[j], record, state, trained)

        group_cfgs, resume = reporter.resume(indices, cfgs)
        if len(group_cfgs) == 1 and not fusable(group_cfgs[0]):
            results = [_alone(group_cfgs[0], ws, on_eval)]  # an SPT-DARTS search, run before any checkpoint
        else:
            results = train_group(group_cfgs, ws, on_eval, resume)
        for index, result in zip(indices, results, strict=True):
            reporter.final(index, result)
            ended.add(index)


def _alone(cfg: ExperimentConfig, ws: Any, on_eval: Any) -> Any:
    """A member that cannot be fused (SPT-DARTS) trained by itself, as a one-member result."""
    from autoprompt_search.errors import TrainingError
    from autoprompt_search.training.loop import train_experiment

    try:
        return train_experiment(cfg, ws, lambda record, state, trained: on_eval(0, record, state, trained))
    except TrainingError as exc:
        from autoprompt_search.training.loop import TrainResult

        return TrainResult(None, {"dev": {}, "trainable_params": 0}, [], {}, cfg, "ERROR", str(exc))  # type: ignore[arg-type]


def _pruner(study: TrialPayload) -> Any:
    import optuna

    if not study.prune:
        return optuna.pruners.NopPruner()
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=study.grace_period, reduction_factor=study.reduction_factor
    )


def _optuna_trial(study: Any, number: int) -> Any:
    import optuna

    return optuna.trial.Trial(study, study.trials[number]._trial_id)
