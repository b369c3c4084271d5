"""The Python API: `search`, `resume`, `train` and `load`, what the `autoprompt` commands call.

    from autoprompt_search import load, resume, search, train

    result = search("all", task="trec", steps=150, num_samples=6, finalists=2, seeds=2)
    result = resume(result.study_dir)   # after an interruption: finished trials are kept
    result.table            # pandas DataFrame of trials.parquet (finalist runs included)
    result.best_config      # {'method': {...}, 'train': {...}} of the study's best
    run = train(output="runs/best", task="trec", method="late", layer=3, steps=300)
    model = load("runs/best")
    model.predict(["How far is the moon?"])   # -> ['NUM']

Keyword arguments of the experiment are the command line's (`TrainOptions`: model, task,
data_dir, steps, lr, method, layers, ...); a study's knobs are `StudyOptions`' fields.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError
from .runs import TrainOptions, experiment_from_options, train_to_directory
from .trainer import TrainResult

STUDY_KNOBS = ("num_samples", "max_concurrent", "fuse", "objectives", "sampler", "startup_trials", "scheduler",
               "grace_period", "cpus_per_worker", "gpus_per_worker", "workers_per_trial", "max_failures", "reuse_actors",
               "finalists", "seeds", "reduction_factor", "enqueue", "warm_start", "max_trainable")  # fmt: skip


@dataclass
class SearchResult:
    """A finished (or interrupted) study: where it is, its rows, and its best configuration."""

    study_dir: Path
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None  # the best finalist (median over seeds) or trial row, see study.ranking
    best_config: dict[str, Any] | None  # the best's sampled {'method': ..., 'train': ...}
    wall_seconds: float
    interrupted: bool = False  # stopped by Ctrl-C before the end: `resume(study_dir)` goes on
    finished_before: bool = False  # a resume of a study that had already finished: nothing ran

    @property
    def table(self) -> Any:
        """trials.parquet as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.rows)


def _train_options(experiment: dict[str, Any]) -> TrainOptions:
    known = {f.name for f in fields(TrainOptions)}
    unknown = sorted(set(experiment) - known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: not an experiment option; use one of {', '.join(sorted(known))}")
    return TrainOptions(**experiment)


def search(
    space: str = "all",
    *,
    name: str = "default",
    results_dir: str | Path = "results",
    overwrite: bool = False,
    search_seed: int = 0,
    address: str | None = None,
    num_cpus: int | None = None,
    callbacks: list[Any] | None = None,
    ray_settings: Any = None,
    on_connect: Any = None,
    **options: Any,
) -> SearchResult:
    """Run a study on Ray (a local one unless `address`) and return its result. `options`: the
    study's knobs (num_samples, finalists, seeds, objectives, ...) and the experiment's (model,
    task, steps, seed: the training seed, ...); `search_seed` seeds the sampler. `ray_settings` (a
    RaySettings) replaces address/num_cpus; `on_connect(cluster, study_dir)` runs once Ray is up."""
    from .study.cluster import RaySettings
    from .study.options import make_options, read_enqueued, study_path
    from .study.runner import run_study

    study = {k: options.pop(k) for k in list(options) if k in STUDY_KNOBS} | {"seed": search_seed}
    # enqueue: files of configurations to try first; warm_start: a study directory, or a name under results_dir
    study["enqueue"] = read_enqueued([str(p) for p in study.get("enqueue") or []])
    if study.get("warm_start"):
        study["warm_start"] = str(study_path(study["warm_start"], results_dir).resolve())
    options_ = make_options(space, _train_options(options), name=name, **study)
    settings = ray_settings if ray_settings is not None else RaySettings(address=address, num_cpus=num_cpus)
    return _search_result(run_study(options_, results_dir, overwrite, settings, on_connect, callbacks))


def resume(
    study: str | Path,
    *,
    results_dir: str | Path = "results",
    address: str | None = None,
    num_cpus: int | None = None,
    ray_settings: Any = None,
    on_connect: Any = None,
    given: dict[str, Any] | None = None,
) -> SearchResult:
    """Continue an interrupted study (a name under `results_dir`, or its directory) with its stored
    options: finished trials are kept, the rest run, then its finalists. `given`: options the caller
    set (name -> value); one that differs from the stored study is a ConfigError."""
    from .study.cluster import RaySettings
    from .study.runner import resume_study

    settings = ray_settings if ray_settings is not None else RaySettings(address=address, num_cpus=num_cpus)
    return _search_result(resume_study(str(study), results_dir, settings, on_connect, given))


def _search_result(run: Any) -> SearchResult:
    from .study.options import StudyOptions
    from .study.ranking import best_row

    best = best_row(run.rows, StudyOptions.load(run.study_dir).parsed_objectives)
    config = None
    if best is not None:
        source = best.get("finalist_of") or best["trial_id"]
        config = next(r for r in run.rows if r["trial_id"] == source)["config"]
    sampled = None if config is None else json.loads(config)
    return SearchResult(run.study_dir, run.rows, best, sampled, run.wall_seconds, run.interrupted, run.finished_before)


def train(output: str | Path = "runs/train", overwrite: bool = False, **options: Any) -> TrainResult:
    """Train one configuration (the `autoprompt train` options) and save it to `output`."""
    return train_to_directory(experiment_from_options(_train_options(options)), output, overwrite)


class Predictor:
    """A trained run, ready to label texts."""

    def __init__(self, model: Any, cfg: Any, tokenizer: Any, labels: tuple[str, ...], device: torch.device) -> None:
        self.model, self.cfg, self.tokenizer, self.labels, self.device = model, cfg, tokenizer, labels, device

    def predict(self, texts: Sequence[str] | Sequence[tuple[str, str]]) -> list[str]:
        """The predicted label of each text (or text pair, for pair tasks)."""
        from .data import Examples, tokenize
        from .evaluation import predict_split

        pairs = [t if isinstance(t, tuple) else (t,) for t in texts]
        text_b = [p[1] for p in pairs] if pairs and len(pairs[0]) > 1 else None
        examples = Examples([p[0] for p in pairs], text_b, [0] * len(pairs))
        append_mask = self.cfg.head.kind == "label_words" and not self.model.backbone.causal
        split = tokenize(self.tokenizer, examples, self.cfg.data.max_length, append_mask, use_cache=False)
        preds = predict_split(self.model, split, self.cfg.train.eval_batch_size, self.device, self.cfg.train.precision)
        return [self.labels[int(i)] for i in preds]


def load(run_dir: str | Path, device: str = "auto") -> Predictor:
    """A run directory (`autoprompt train` or `export`) as a Predictor; its data files are not needed."""
    from .checkpoint import load_run
    from .workspace import resolve_device

    model, cfg, ws = load_run(run_dir, device=device, with_data=False)
    return Predictor(model, cfg, ws.tokenizer, tuple(ws.data.task.labels), resolve_device(device))
