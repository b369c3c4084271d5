"""What defines a study: the base experiment, the search space, objectives, resources, and how
command-line values become one (`make_options`).

Saved as `study.json` beside the results so `--resume`, `status` and `export` need nothing
but the study directory.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from autoprompt_search.config import ExperimentConfig, absolute_paths
from autoprompt_search.dataclass_io import from_dict, to_dict
from autoprompt_search.errors import ConfigError, require
from autoprompt_search.experiment_options import ExperimentOptions, experiment_from_options, experiment_options
from autoprompt_search.option_fields import cli_names, declared, flag_of, option
from autoprompt_search.storage.staging import STUDY_FILE
from autoprompt_search.study.space import SearchSpace, SearchSpaceError, fix_steps, sampled_of, space_path

# What a trial reports after every evaluation; objectives and ASHA read these.
REPORTED_METRICS = (
    "dev_score",  # best dev score so far: the checkpointed state, and the default objective
    "eval_score",  # dev score of this evaluation
    "eval_accuracy",
    "train_loss",
    "trainable_params",
    "worker_seconds",  # wall seconds of the Train worker so far, loading included
)
SAMPLERS = ("auto", "tpe", "nsga2", "random")
SCHEDULERS = ("asha", "fifo")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class Objective:
    metric: str
    mode: str  # max | min

    @staticmethod
    def parse(text: str) -> Objective:
        metric, _, mode = text.partition(":")
        metric, mode = metric.strip(), (mode.strip() or ("min" if metric.strip() != "dev_score" else "max"))
        require(
            metric in REPORTED_METRICS,
            f"objective: {metric!r} is not a reported metric; use one of {', '.join(REPORTED_METRICS)}",
        )
        require(mode in ("max", "min"), f"objective: mode {mode!r} for {metric}; use {metric}:max or {metric}:min")
        return Objective(metric, mode)

    def __str__(self) -> str:
        return f"{self.metric}:{self.mode}"


def parse_budget(text: str) -> tuple[float, bool] | None:
    """`max_trainable` as (value, is a percentage of the model's weights), or None when unset."""
    text = str(text).strip()
    if not text:
        return None
    percent = text.endswith("%")
    try:
        value = float(text[:-1] if percent else text.replace(",", "").replace("_", ""))
    except ValueError:
        value = float("nan")
    ok = value > 0 and (value <= 100 if percent else float(value).is_integer())
    require(
        ok,
        f"study.max_trainable: {text!r} is not a budget; give a parameter count (e.g. 150000) "
        "or a share of the model's weights (e.g. 0.5%)",
    )
    return value, percent


# Older study.json names: per-trial resources were per worker; `seed` was the sampler's seed.
RENAMED = {"cpus_per_trial": "cpus_per_worker", "gpus_per_trial": "gpus_per_worker", "seed": "search_seed"}


SEARCH = ("search",)


@dataclass
class StudyOptions:
    """A study's options; each field a user sets is declared once here (`option`): `autoprompt
    search` takes it as a flag, `search(...)` as a keyword argument, `study.json` stores it."""

    name: str = option("default", "study name: its results go to RESULTS_DIR/NAME", "Study", commands=SEARCH)
    space: dict[str, Any] = field(default_factory=dict)  # the search-space mapping (file contents)
    space_file: str = ""
    experiment: dict[str, Any] = field(default_factory=dict)  # base ExperimentConfig as a dict
    objectives: list[str] = option(
        help="METRIC:max|min, repeatable; several = multi-objective (NSGA-II)", panel="Study", names=("--objective",),
        commands=SEARCH, factory=lambda: ["dev_score:max"],
    )  # fmt: skip
    num_samples: int = option(6, "trials in the study (with --budget: as many as it holds)", "Study", commands=SEARCH)
    budget: str = option(
        "", "the search's compute instead of a trial count: 4runs (x --steps) or 20000steps", "Study", commands=SEARCH
    )
    max_trainable: str = option(
        "", "trainable-parameter budget per trial: a count (150000) or a share of the model (0.5%); draws over it "
        "are never trained", "Study", commands=SEARCH,
    )  # fmt: skip
    finalists: int = option(
        3, "after the search, retrain its top K configurations over --seeds fresh seeds (0 = none)", "Study",
        commands=SEARCH,
    )  # fmt: skip
    seeds: int = option(3, "seeds per finalist; the study's best is the best median", "Study", commands=SEARCH)
    portfolio: bool = option(
        True, "try configurations learnt on other tasks first (never this task's)", "Study",
        names=("--portfolio/--no-portfolio",), commands=SEARCH,
    )  # fmt: skip
    enqueue: list[dict[str, Any]] = option(
        help="a config (an exported config.yaml, or method/train) to try first; repeatable", panel="Study",
        commands=SEARCH, factory=list, cli_type=list[str],
    )  # fmt: skip
    warm_start: str = option(
        "", "a study (a name under --results-dir, or a directory) whose finished trials the sampler learns from",
        "Study", commands=SEARCH,
    )  # fmt: skip
    sampler: str = option("auto", "auto (TPE; NSGA-II for several objectives) | tpe | nsga2 | random", "Sampler",
                          commands=SEARCH)  # fmt: skip
    search_seed: int = option(0, "the sampler's seed", "Sampler", commands=("search", "space"))
    startup_trials: int = option(
        0, "TPE: random trials before it models results (0 = 10, or a quarter of a smaller study)", "Sampler",
        commands=SEARCH,
    )  # fmt: skip
    scheduler: str = option("asha", "asha (early stopping, one objective) | fifo", "Sampler", commands=SEARCH)
    grace_period: int = option(1, "ASHA: evaluations before a trial may be stopped", "Sampler", commands=SEARCH)
    reduction_factor: int = option(3, "ASHA: keep 1 of this many trials at each rung", "Sampler", commands=SEARCH)
    max_concurrent: int = option(2, "Train jobs running at once (each a trial, or a fused group)", "Resources",
                                 commands=SEARCH)  # fmt: skip
    fuse: int = option(
        1, "trials trained together in one Train job over one backbone (1 = one trial per job)", "Resources",
        commands=SEARCH,
    )  # fmt: skip
    cpus_per_worker: float = option(
        1.0, "CPUs per Train worker (per trial: this x --workers-per-trial)", "Resources", commands=SEARCH
    )
    gpus_per_worker: float = option(
        0.0, "GPUs per Train worker (per trial: this x --workers-per-trial); 0.25 packs 4 workers on a GPU",
        "Resources", commands=SEARCH,
    )  # fmt: skip
    workers_per_trial: int = option(1, "Ray Train workers (DDP ranks) per trial", "Resources", commands=SEARCH)
    max_failures: int = option(
        2, "restarts of a trial's Train run after a worker crash (from its last checkpoint)", "Resources",
        commands=SEARCH,
    )  # fmt: skip
    reuse_actors: bool = option(False, "Tune runs the next trial in a finished trial's process", "Resources",
                                names=("--reuse-actors/--no-reuse-actors",), commands=SEARCH)  # fmt: skip

    def __post_init__(self) -> None:
        self.experiment = absolute_paths(self.experiment)  # Ray workers run in other directories
        require(
            len(self.name) <= 64, f"study: name {self.name[:20]!r}... has {len(self.name)} characters; use 64 at most"
        )
        require(bool(NAME.match(self.name)), f"study: name {self.name!r} must be letters, digits, '-', '_' or '.'")
        require(self.num_samples >= 1, f"study.num_samples: must be >= 1, got {self.num_samples}")
        require(self.max_concurrent >= 1, f"study.max_concurrent: must be >= 1, got {self.max_concurrent}")
        require(self.cpus_per_worker >= 0.05, f"study.cpus_per_worker: must be >= 0.05, got {self.cpus_per_worker}")
        require(self.gpus_per_worker >= 0, f"study.gpus_per_worker: must be >= 0, got {self.gpus_per_worker}")
        require(
            self.gpus_per_worker <= 1 or float(self.gpus_per_worker).is_integer(),
            f"study.gpus_per_worker: {self.gpus_per_worker} GPUs per worker must be a fraction <= 1 or whole; "
            "use --workers-per-trial for several GPUs",
        )
        require(self.fuse >= 1, f"study.fuse: must be >= 1 (1 = one trial per Train job), got {self.fuse}")
        require(self.finalists >= 0, f"study.finalists: must be >= 0 (0 = no finalist runs), got {self.finalists}")
        require(self.seeds >= 1, f"study.seeds: must be >= 1 seed per finalist, got {self.seeds}")
        require(self.max_failures >= 0, f"study.max_failures: must be >= 0, got {self.max_failures}")
        require(self.workers_per_trial >= 1, f"study.workers_per_trial: must be >= 1, got {self.workers_per_trial}")
        require(self.sampler in SAMPLERS, f"study.sampler: {self.sampler!r} unknown; use {', '.join(SAMPLERS)}")
        require(self.scheduler in SCHEDULERS, f"study.scheduler: {self.scheduler!r}; use {', '.join(SCHEDULERS)}")
        require(self.startup_trials >= 0, f"study.startup_trials: must be >= 0 (0 = auto), got {self.startup_trials}")
        require(self.grace_period >= 1, f"study.grace_period: must be >= 1, got {self.grace_period}")
        require(self.reduction_factor >= 2, f"study.reduction_factor: must be >= 2, got {self.reduction_factor}")
        parse_budget(self.max_trainable)  # a malformed budget fails here
        if self.budget:
            require(self.fuse == 1, "study.budget: not available with --fuse yet; drop one of them")
            from autoprompt_search.study.step_budget import parse_step_budget

            parse_step_budget(self.budget, self.steps_per_run)  # a malformed step budget fails here
        objectives = [Objective.parse(o) for o in self.objectives]
        require(bool(objectives), "study.objectives: give at least one, e.g. dev_score:max")
        metrics = [o.metric for o in objectives]
        require(len(set(metrics)) == len(metrics), f"study.objectives: {metrics} repeats a metric")
        require(
            self.sampler != "nsga2" or len(objectives) > 1,
            "study.sampler: nsga2 is for several objectives; add e.g. --objective trainable_params:min",
        )

    @property
    def notices(self) -> list[str]:
        """What this study will do other than asked, one line each (said before it starts)."""
        out = []
        if not self.budget and self.finalists > self.num_samples:
            out.append(
                f"finalists: {self.finalists} asked of a {self.num_samples}-trial search; "
                f"at most {self.num_samples} configurations can be retrained"
            )
        return out

    @property
    def parsed_objectives(self) -> list[Objective]:
        return [Objective.parse(o) for o in self.objectives]

    @property
    def tpe_startup_trials(self) -> int:
        """TPE's random trials before it models the results: as given, else Optuna's 10 or a quarter
        of a smaller study (at least 2). With Optuna's 10 a study of 8 trials (what a 2-core machine
        affords) never leaves random search."""
        return self.startup_trials or max(2, min(10, self.planned_trials // 4))

    @property
    def planned_trials(self) -> int:
        """Trials the study expects: num_samples, or under a budget about three per full run's steps
        (ASHA's brackets stop most trials at N/8 or 3N/8 steps)."""
        budget = self.budget_steps
        if budget is None:
            return self.num_samples
        per_run = budget // self.steps_per_run
        return min(self.num_samples, 3 * per_run if self.scheduler == "asha" else per_run)

    @property
    def steps_per_run(self) -> int:
        """The base experiment's training steps (a full-length trial), unless the space searches them."""
        steps = self.space.get("train", {}).get("steps") if isinstance(self.space.get("train"), dict) else None
        if isinstance(steps, dict):
            raise ConfigError("study.budget: the space searches train.steps; fix them to use a step budget")
        return int(steps) if steps is not None else self.base_experiment().train.steps

    @property
    def budget_steps(self) -> int | None:
        """--budget in training steps, or None without one."""
        from autoprompt_search.study.step_budget import parse_step_budget

        return parse_step_budget(self.budget, self.steps_per_run) if self.budget else None

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def base_experiment(self) -> ExperimentConfig:
        return ExperimentConfig.from_dict(self.experiment)

    def save(self, directory: Path) -> None:
        tmp = directory / (STUDY_FILE + ".tmp")
        tmp.write_text(json.dumps(to_dict(self), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(directory / STUDY_FILE)

    @staticmethod
    def load(directory: str | Path) -> StudyOptions:
        path = Path(directory) / STUDY_FILE
        if not path.is_file():
            raise ConfigError(f"study: {str(path)!r} not found; give a study directory written by `autoprompt search`")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"study: {path} is not valid JSON ({exc.msg}); the study directory is corrupt") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"study: {path} is not a study description; the study directory is corrupt")
        for old, new in RENAMED.items():  # study.json written before the rename
            if old in data:
                data.setdefault(new, data.pop(old))
        try:
            return from_dict(StudyOptions, data, "study")
        except ConfigError:
            raise
        except (TypeError, ValueError, AttributeError) as exc:  # a value of the wrong type
            raise ConfigError(
                f"study: {path} does not describe a study ({exc}); the study directory is corrupt"
            ) from exc


def resume_conflicts(options: StudyOptions, given: dict[str, Any]) -> list[str]:
    """The options given with --resume (field name -> value) that differ from what the study
    stored, one line each; a resumed study keeps its options."""
    study_fields = {f.name: flag for f, flag in declared(StudyOptions, "search")}
    experiment_fields = {f.name: flag for f, flag in declared(ExperimentOptions, "search")}
    out = []
    for name, value in given.items():
        shown = flag_shown(name, (StudyOptions, ExperimentOptions))
        if name in study_fields and name not in ("name", "enqueue", "warm_start"):
            stored = getattr(options, name)
            if name == "objectives":
                value = [str(Objective.parse(v)) for v in value]
                stored = [str(Objective.parse(v)) for v in stored]
        elif name in experiment_fields and experiment_fields[name].config:
            stored = options.experiment
            for key in experiment_fields[name].config.split("."):
                stored = stored.get(key) if isinstance(stored, dict) else None
            if name in ("data_dir", "model") and isinstance(value, str) and Path(value).exists():
                value = str(Path(value).resolve())
        elif name == "space":
            from autoprompt_search.study.space import space_path

            value, stored = str(space_path(value).resolve()), str(Path(options.space_file).resolve())
        else:  # --config, --column, --enqueue, --warm-start, --name, --overwrite: nothing to compare
            out.append(f"{shown} cannot change a resumed study")
            continue
        if value != stored:
            out.append(f"{shown} {value} differs from the study's {stored}")
    return out


def flag_shown(name: str, classes: tuple[type, ...]) -> str:
    """The command-line spelling of an option (`objectives` -> `--objective`)."""
    for cls in classes:
        for f in fields(cls):
            if f.name == name and (flag := flag_of(f)) is not None:
                return cli_names(f, flag)[0].split("/")[0]
    return "--" + name.replace("_", "-")


def study_path(study: str | Path, results_dir: str | Path) -> Path:
    """A study given by name (a directory under `results_dir`) or as a path. A bare name is looked
    up under `results_dir` first; a name with a `/`, or one only the current directory holds, is a path."""
    given = Path(study)
    under = Path(results_dir) / given
    if given.is_absolute() or "/" in str(study) or (given.is_dir() and not under.is_dir()):
        return given
    return under


def resolve_space(spec: str) -> tuple[dict[str, Any], str]:
    """A search-space file path, or the name of a shipped one (all, layers, lpt); returns (mapping, path)."""
    path = space_path(spec)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SearchSpaceError(str(path), [f"not valid YAML ({str(exc).splitlines()[0]})"]) from exc
    SearchSpace.from_dict(data, str(path))  # every problem at once, before anything starts
    return data, str(path)


def make_options(space: str, base: ExperimentOptions, **study: Any) -> StudyOptions:
    """The study: a space, the base experiment (flags over --config over the embedded default), knobs."""

    mapping, path = resolve_space(space)
    experiment = experiment_from_options(base)
    if experiment.train.epochs or "epochs" in (mapping.get("train") or {}):
        # ASHA's rungs and a trial's "trained to the end" are counted in steps.
        raise ConfigError("train.epochs: a study budgets trials in steps; use --steps (or train.steps)")
    fixed = (mapping.get("train") or {}).get("steps")
    if base.steps is not None and fixed is not None:  # an explicit --steps beats the space's fixed value
        mapping = fix_steps(
            mapping,
            base.steps,
            f"--steps {base.steps}: {path} searches train.steps; drop --steps or fix it in the space",
        )
    return StudyOptions(space=mapping, space_file=path, experiment=experiment.to_dict(), **study)


def study_options(space: str, *, name: str, results_dir: str | Path, **options: Any) -> StudyOptions:
    """The study that `search(space, **options)` asks for: keyword arguments that name a study
    option (a declared StudyOptions field) set it, the rest describe the base experiment
    (ExperimentOptions' fields; `seed` there is the training seed, `search_seed` the sampler's)."""
    knobs = {f.name for f, _ in declared(StudyOptions, "search")} - {"name"}
    study = {k: options.pop(k) for k in list(options) if k in knobs}
    if study.get("budget") and study.get("num_samples") is None:
        from autoprompt_search.study.step_budget import BUDGET_TRIAL_CAP

        study["num_samples"] = BUDGET_TRIAL_CAP  # the budget ends the search, not a trial count
    study = {k: v for k, v in study.items() if v is not None}
    # enqueue: files of configurations to try first; warm_start: a study directory, or a name under results_dir
    study["enqueue"] = read_enqueued([str(p) for p in study.get("enqueue") or []])
    if study.get("warm_start"):
        study["warm_start"] = str(study_path(study["warm_start"], results_dir).resolve())
    return make_options(space, experiment_options(options), name=name, **study)


def read_enqueued(paths: list[str]) -> list[dict[str, Any]]:
    """`--enqueue` files: an exported config.yaml (a whole experiment) or a hand-written
    {'method': {...}, 'train': {...}}; returns their method and train sections."""
    configs = []
    for path in paths:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(
                f"--enqueue {path}: cannot read it ({exc.strerror}); give an exported config.yaml"
            ) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"--enqueue {path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("method"), dict):
            raise ConfigError(f"--enqueue {path}: no 'method' section; give an exported config.yaml or method/train")
        configs.append(sampled_of(data))
    return configs
