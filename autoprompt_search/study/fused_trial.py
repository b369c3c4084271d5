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

from .trial import (
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

    from ..config import ExperimentConfig


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


def _train_group_and_report(loop_config: dict[str, Any], ended: set[int]) -> None:
    import ray.train
    from optuna.trial import TrialState

    from ..backbones import BackboneInfo
    from ..checkpoint import resume_from, save_state, save_training_state
    from ..fused import fusable, partition
    from ..fused_trainer import train_group
    from ..search_space import experiment_for
    from ..workspace import prepare_workspace
    from .options import open_study
    from .records import ENDED, recorded_row

    started, started_at = time.perf_counter(), time.time()
    task: WorkerTask = loop_config["task"]
    study = task.study
    members: list[dict[str, Any]] = task.sampled["members"]
    finalists = any(m.get("finalist_of") for m in members)
    cfgs = [experiment_for(study.experiment, m) for m in members]
    gpu_ids = [place(cfg, task.use_gpu) for cfg in cfgs][-1]  # every member on this worker's device
    ws = prepare_workspace(cfgs[0])
    if not finalists:
        ws.splits.pop("test", None)  # a search selects on dev only
    load_seconds = time.perf_counter() - started
    rank = ray.train.get_context().get_world_rank()
    searching = rank == 0 and not finalists
    optuna_study = open_study(study.optuna_storage, study.study, pruner=_pruner(study)) if searching else None
    out = task.run_dir / "members"
    evaluations = [0] * len(members)
    last: dict[int, dict[str, Any]] = {}  # member -> its latest report (objective values for the end)
    resumed: dict[int, Any] = {}  # member -> the TrainingState it continued from, until its first report
    resumed_from: dict[int, int] = {}  # member -> the step it continued from after a restart
    single_objective = len(study.objectives) == 1  # Optuna's report and pruners are single-objective

    def finished(index: int) -> bool:  # resume: Optuna (finalists: the table) already holds its result
        if finalists:
            row = recorded_row(study.study_dir, member_id(task.trial_id, index))
            return row is not None and row["status"] in ENDED
        if optuna_study is None:
            return False
        return optuna_study.trials[members[index]["number"]].state != TrialState.RUNNING

    todo = [i for i in range(len(members)) if not _broadcast(finished(i))]
    ended.update(i for i in range(len(members)) if i not in todo)

    def common(index: int) -> dict[str, Any]:
        return {
            **member_keys(loop_config, index),
            "load_seconds": load_seconds,
            "worker_seconds": time.perf_counter() - started,
            "worker_started_at": started_at,
            "trial_entered_at": task.trial_entered_at,
            "gpu_ids": ",".join(gpu_ids),
            "resumed_from_step": resumed_from.get(index, 0),
        }

    text_tokens = float(ws.splits["train"].lengths.float().mean())
    for group in partition([cfgs[i] for i in todo], BackboneInfo.of(ws.backbone), len(todo), text_tokens):
        indices = [todo[j] for j in group]

        def on_eval(
            j: int,
            record: dict[str, Any],
            state: dict[str, torch.Tensor],
            trained: ExperimentConfig,
            indices: list[int] = indices,
        ) -> bool:
            index = indices[j]
            evaluations[index] += 1
            metrics = {**common(index), **evaluation_metrics(record, state, trained)}
            if index in resumed:  # its first report after a restart: the evaluations before it
                metrics[RESTORED_HISTORY] = restored_history(resumed.pop(index))
            prune = False
            if optuna_study is not None and single_objective:  # intermediate values with or without ASHA
                trial = _optuna_trial(optuna_study, members[index]["number"])
                trial.report(record["eval_score"], evaluations[index])
                prune = study.prune and trial.should_prune()
            if rank == 0:
                # The best state and the configuration trained (SPT-DARTS: the derived one) with the
                # training state: the member resumes from here after a crash.
                path = out / str(index)
                save_state(state, trained, path, {"dev_score": record["best_score"], "step": record["best_step"]}, [])
                save_training_state(record["training_state"](), path)
                if record["improved"]:
                    metrics["member_checkpoint"] = str(path)
            last[index] = metrics
            ray.train.report(metrics)
            return _broadcast(prune)

        # After a worker crash Ray Train restarts the job: members continue from their last evaluation.
        group_cfgs, resume = [], {}
        for j, i in enumerate(indices):
            cfg, state = resume_from(out / str(i), cfgs[i])  # SPT-DARTS: the derived layers, no new search
            group_cfgs.append(cfg)
            if state is not None:
                resume[j] = state
                evaluations[i] = len(state.meta["history"])
                resumed[i] = state
                resumed_from[i] = int(state.meta["step"])
        if len(group_cfgs) == 1 and not fusable(group_cfgs[0]):
            results = [_alone(group_cfgs[0], ws, on_eval)]  # an SPT-DARTS search, run before any checkpoint
        else:
            results = train_group(group_cfgs, ws, on_eval, resume)
        for index, result in zip(indices, results, strict=True):
            final = {
                **last.get(index, {}),
                **common(index),
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
            ended.add(index)


def _alone(cfg: ExperimentConfig, ws: Any, on_eval: Any) -> Any:
    """A member that cannot be fused (SPT-DARTS) trained by itself, as a one-member result."""
    from ..errors import TrainingError
    from ..trainer import train

    try:
        return train(cfg, ws, lambda record, state, trained: on_eval(0, record, state, trained))
    except TrainingError as exc:
        from ..trainer import TrainResult

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
