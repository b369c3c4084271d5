"""One study trial: a Ray Tune function trainable that drives one Ray Train run (Train V2), and
the trainable a study hands to Tune (one configuration, or a fused group, per Tune trial).

The Tune trial holds almost no resources (it only waits on `TorchTrainer.fit()`); the Train
workers hold the CPUs/GPUs, so N concurrent trials on an N-CPU machine never deadlock. Each
worker loads the frozen backbone and the tokenised data (disk-cached), trains one configuration,
and reports after every evaluation through `ray.train.report`; `TuneReportCallback` forwards the
reports to Tune (ASHA, Optuna, the dashboard, TensorBoard). Every report carries a checkpoint:
the best prompt so far, the configuration trained and the training state (to resume from), so a
trial's latest checkpoint holds its best prompt.

Imports are lazy on purpose: every trial starts fresh Ray processes (the Tune trial actor, the
Train controller, the workers), and only the workers need torch and transformers.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autoprompt_search.config import ExperimentConfig
    from autoprompt_search.study.options import StudyOptions

# What the Tune trial itself holds (it only waits on its Train run; the Train controller and the
# report queue actor are placed in its bundle). The workers get the rest of --cpus-per-worker, so
# N one-CPU trials fit N CPUs exactly: with 0.01 on top, two 1-CPU workers on 2 CPUs queued
# behind each other; with no CPU at all, the trial's helper actors took whole CPUs and hung.
TRIAL_CPU = 0.01
TRIAL_RESOURCES = {"CPU": TRIAL_CPU}
# Testing GPU scheduling on a CPU machine: trials hold logical Ray GPUs but train on the CPU.
LOGICAL_GPUS_ENV = "AUTOPROMPT_LOGICAL_GPUS"
TRAIN_DIR = "train"  # Ray Train runs, one per trial id, holding the best checkpoint
RESTORED_HISTORY = "restored_history"  # first report after a resume: the evaluations before it
REPLAYED = ("dev_score", "eval_score", "trainable_params", "worker_seconds")  # objectives a table row holds


@dataclass(frozen=True)
class TrialPayload:
    """What every trial needs from its study, passed once through Ray's object store."""

    experiment: dict[str, Any]  # the base ExperimentConfig as a dict
    study: str  # the study's name: its Optuna study in the journal
    study_dir: str
    train_storage: str  # Ray Train's runs: <study_dir>/train
    optuna_storage: str  # the study's Optuna journal
    objectives: tuple[str, ...]
    cpus_per_worker: float
    gpus_per_worker: float
    workers_per_trial: int
    max_failures: int
    prune: bool  # fused groups: per-member ASHA through Optuna's pruner
    grace_period: int
    reduction_factor: int

    @staticmethod
    def of(options: StudyOptions, study_dir: Path) -> TrialPayload:
        from autoprompt_search.study.journal import OPTUNA_FILE

        return TrialPayload(
            experiment=options.experiment,
            study=options.name,
            study_dir=str(study_dir),
            train_storage=str(study_dir / TRAIN_DIR),
            optuna_storage=str(study_dir / OPTUNA_FILE),
            objectives=tuple(options.objectives),
            cpus_per_worker=options.cpus_per_worker,
            gpus_per_worker=options.gpus_per_worker,
            workers_per_trial=options.workers_per_trial,
            max_failures=options.max_failures,
            prune=options.scheduler == "asha" and not options.multi_objective,
            grace_period=options.grace_period,
            reduction_factor=options.reduction_factor,
        )


@dataclass(frozen=True)
class WorkerTask:
    """What one trial's Train workers train (Ray Train's `train_loop_config["task"]`)."""

    study: TrialPayload
    sampled: dict[str, Any]  # the Tune trial's config: a sampled configuration, or {"members": [...]}
    trial_id: str
    use_gpu: bool
    trial_entered_at: float  # when the Tune trial started (its wait for Ray Train is measured from it)

    @property
    def run_dir(self) -> Path:
        return Path(self.study.train_storage) / self.trial_id


def worker_resources(study: TrialPayload) -> dict[str, float]:
    """What each Train worker of a trial holds (fractional GPUs pack trials onto one GPU)."""
    resources = {"CPU": float(study.cpus_per_worker) - TRIAL_CPU / int(study.workers_per_trial)}
    if float(study.gpus_per_worker):
        resources["GPU"] = float(study.gpus_per_worker)
    return resources


def trial_dirname(trial: Any) -> str:
    return trial.trial_id


def devices_per_trial(options: StudyOptions) -> float:
    per_worker = options.gpus_per_worker or options.cpus_per_worker
    return per_worker * options.workers_per_trial


def run_trial(config: dict[str, Any], study: TrialPayload) -> None:
    """Tune function trainable: build and fit the trial's TorchTrainer, named by trial id."""
    from ray import tune

    from autoprompt_search.study.records import ENDED, recorded_row

    trial_id = tune.get_context().get_trial_id()
    row = recorded_row(study.study_dir, trial_id)
    if row is not None and row["status"] in ENDED:
        # A resumed study's Tune state (saved every few seconds) restarted a trial that had
        # already ended: tell Tune its recorded result instead of training it again.
        tune.report(
            {**{k: row[k] for k in REPLAYED if row[k] is not None}, "trained_to_end": row["status"] == "TERMINATED"}
        )
        return
    make_trainer(train_worker, config, study).fit()


def run_ended(status: str, reason: str) -> dict[str, Any]:
    """The last report of a run that has no result, said as data (a raised error would make Ray
    Train restart the run, only to fail again): NaN objective, so Optuna holds it as failed."""
    from autoprompt_search.study.records import RUN_ERROR, RUN_STATUS

    return {"dev_score": float("nan"), RUN_STATUS: status, RUN_ERROR: reason, "trained_to_end": True}


def make_trainer(loop: Any, config: dict[str, Any], study: TrialPayload) -> Any:
    """The trial's TorchTrainer: `loop` on the Train workers, reports forwarded to Tune."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    entered_at = time.time()
    trial_id = tune.get_context().get_trial_id()
    resources = worker_resources(study)
    use_gpu = "GPU" in resources
    nccl = use_gpu and os.environ.get(LOGICAL_GPUS_ENV) != "1"
    return TorchTrainer(
        loop,
        train_loop_config={"task": WorkerTask(study, config, trial_id, use_gpu, entered_at)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=study.workers_per_trial, use_gpu=use_gpu, resources_per_worker=resources
        ),
        torch_config=TorchConfig(backend="nccl" if nccl else "gloo"),
        run_config=ray.train.RunConfig(
            name=trial_id,
            storage_path=study.train_storage,
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=study.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
    )


def place(cfg: ExperimentConfig, use_gpu: bool) -> list[str]:
    """Point `cfg` at the device Ray gave this worker; returns Ray's GPU ids for it."""
    import ray
    import torch

    from autoprompt_search.errors import ConfigError

    gpu_ids = [str(i) for i in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]
    if use_gpu and torch.cuda.is_available():
        import ray.train.torch

        cfg.train.device = str(ray.train.torch.get_device())
    elif use_gpu and os.environ.get(LOGICAL_GPUS_ENV) != "1":
        raise ConfigError(
            f"Ray gave this trial GPU {gpu_ids} but torch sees no CUDA device on this worker; "
            "install a CUDA build of torch there or use --gpus-per-worker 0"
        )
    else:
        cfg.train.device = "cpu"
    return gpu_ids


def resume_point(cfg: ExperimentConfig, run_dir: Path) -> tuple[ExperimentConfig, Any]:
    """After a worker crash, a lost node or a resumed study: the configuration and TrainingState
    of the run's latest resumable checkpoint, else (cfg, None).

    Ray Train hands a restarted run its latest checkpoint; a Tune-level restart (the trial's own
    process died, e.g. with its node) starts a new Train run that may not know the old one's
    checkpoints, so the run directory is searched too. The checkpoint's config is the one
    trained (for SPT-DARTS the derived layers), so a restart continues that training.
    """
    import ray.train

    from autoprompt_search.storage.checkpoint import TRAINING_META, resume_from, training_step

    checkpoint = ray.train.get_checkpoint()
    with contextlib.ExitStack() as stack:
        if checkpoint is not None:
            candidates = [Path(stack.enter_context(checkpoint.as_directory()))]
        else:
            candidates = [d for d in run_dir.glob("checkpoint_*") if (d / TRAINING_META).is_file()]
        if not candidates:
            return cfg, None
        return resume_from(max(candidates, key=training_step), cfg)


def evaluation_metrics(record: dict[str, Any], state: dict[str, Any], trained: ExperimentConfig) -> dict[str, Any]:
    """What a worker reports to Tune for one evaluation record of `train`/`train_group`."""
    return {
        "step": record["step"],
        "train_loss": record["train_loss"],
        "eval_score": record["eval_score"],
        "eval_accuracy": record["eval_accuracy"],
        "eval_collapsed": bool(record["eval_collapsed"]),
        "dev_score": record["best_score"],  # the objective: best so far, -inf until one did not collapse
        "trainable_params": sum(t.numel() for t in state.values()),
        "trained_to_end": record["step"] == trained.train.steps,
    }


def restored_history(state: Any) -> str:
    """A resumed run's evaluations before its checkpoint, as the results table keeps them (the
    driver may never have seen them: reports queued in a trial process that died are lost)."""
    return json.dumps(
        [
            {
                "step": h["step"],
                "train_loss": h["train_loss"],
                "eval_score": h["eval_score"],
                "eval_accuracy": h["eval_accuracy"],
                "eval_collapsed": bool(h.get("eval_collapsed")),
                "dev_score": h["best_score"] if math.isfinite(h["best_score"]) else None,
            }
            for h in state.meta["history"]
        ]
    )


def train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker loop: train one configuration and report every evaluation with a
    resumable checkpoint (the best prompt + the training state), continuing from the latest
    checkpoint when Ray Train restarts the run after a worker failure."""
    import ray.train

    with configuration_failures(lambda reason: ray.train.report(run_ended("ERROR", reason))):
        _train_and_report(loop_config)


@contextlib.contextmanager
def configuration_failures(report_failure: Callable[[str], None]) -> Iterator[None]:
    """Report the configuration's own failures (NaN loss, a rejected option, out of memory) as
    data through `report_failure(reason)` instead of raising: Ray Train would restart the run,
    only to fail again. Anything else may be the machine's fault and is raised for FailureConfig."""
    from autoprompt_search.errors import AutopromptError

    try:
        yield
    except (AutopromptError, RuntimeError, MemoryError) as exc:
        if not isinstance(exc, AutopromptError) and not is_out_of_memory(exc):
            raise
        report_failure(failure_message(exc))


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's accelerator OOM or Python's MemoryError, by type; the CPU allocator refusing a
    tensor raises a plain RuntimeError, recognised by its message ("can't allocate memory")."""
    import torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(exc)


def failure_message(exc: BaseException) -> str:
    from autoprompt_search.errors import AutopromptError

    if not isinstance(exc, AutopromptError) and is_out_of_memory(exc):
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return (
            f"out of memory ({first}); lower --batch-size or the prompt/generator size, or pack fewer "
            "trials per GPU (--gpus-per-worker)"
        )
    return str(exc)


def _train_and_report(loop_config: dict[str, Any]) -> None:
    import ray.train
    import torch

    from autoprompt_search.storage.checkpoint import save_state, save_training_state
    from autoprompt_search.study.space import experiment_for
    from autoprompt_search.training.loop import train_experiment
    from autoprompt_search.training.metrics import COLLAPSED
    from autoprompt_search.training.workspace import prepare_workspace

    started, started_at = time.perf_counter(), time.time()
    task: WorkerTask = loop_config["task"]
    cfg = experiment_for(task.study.experiment, task.sampled)
    gpu_ids = place(cfg, task.use_gpu)
    cfg, resume = resume_point(cfg, task.run_dir)
    ws = prepare_workspace(cfg)
    ws.splits.pop("test", None)  # a search selects on dev only; test is for exported configs
    load_seconds = time.perf_counter() - started
    rank = ray.train.get_context().get_world_rank()
    resumed_from = int(resume.meta["step"]) if resume is not None else 0
    reported = {"n": 0}

    def report(record: dict[str, Any], best_state: dict[str, torch.Tensor], trained: ExperimentConfig) -> None:
        metrics = {
            **evaluation_metrics(record, best_state, trained),
            "load_seconds": load_seconds,
            "worker_seconds": time.perf_counter() - started,
            "worker_started_at": started_at,
            "trial_entered_at": task.trial_entered_at,
            "gpu_ids": ",".join(gpu_ids),
            "resumed_from_step": resumed_from,
        }
        if resume is not None and not reported["n"]:
            metrics[RESTORED_HISTORY] = restored_history(resume)
        reported["n"] += 1
        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            save_state(best_state, trained, tmp, {"dev_score": record["best_score"], "step": record["best_step"]}, [])
            save_training_state(record["training_state"](), tmp)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    result = train_experiment(cfg, ws, on_eval=report, resume=resume)
    if resume is not None and not reported["n"] and result.history:
        # Restarted after its last evaluation (a crash between the final report and the end):
        # report that evaluation again so Tune gets the trial's result.
        final = dict(
            result.history[-1], improved=False, best_step=result.metrics["best_step"], training_state=lambda: resume
        )
        report(final, result.best_state, result.config)
    if result.status == "COLLAPSED":
        # Said as data, not raised (Tune would retry a raised trial): the results table marks it
        # COLLAPSED, and a NaN objective makes Optuna hold it as failed.
        ray.train.report(run_ended("COLLAPSED", result.error or COLLAPSED))
