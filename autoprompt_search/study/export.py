"""Choose trials from `trials.parquet` (top k, or the Pareto front) and export them as runs.

Each exported run is a directory that `autoprompt predict` serves (prompt.safetensors +
config.json from the trial's best checkpoint) plus `config.yaml`, which `autoprompt train
--config` retrains from scratch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from autoprompt_search.errors import ConfigError
from autoprompt_search.storage.checkpoint import CONFIG, WEIGHTS, read_run
from autoprompt_search.storage.merged_format import MERGED_DIR, merged_model, write_merged_model
from autoprompt_search.storage.peft_format import run_adapter, write_peft_adapter
from autoprompt_search.storage.staging import refuse_study_dir, staged_directory
from autoprompt_search.study.options import Objective, StudyOptions
from autoprompt_search.study.ranking import SELECTABLE, finalist_groups, objective_value, pareto_front, rank_top
from autoprompt_search.study.records import study_rows

# peft: adapter_config.json + adapter_model.safetensors beside our files; merged: a LoRA run folded
# into a transformers model in merged/
FORMS = ("native", "peft", "merged")


def export_study(
    study_dir: str | Path,
    output: str | Path | None = None,
    top: int = 1,
    pareto: bool = False,
    overwrite: bool = False,
    form: str = "native",
) -> list[Path]:
    """Export chosen trials into `output` (default: <study>/export); returns the run directories.
    form="peft" also writes each run as a peft adapter, form="merged" a LoRA run as a transformers
    model in merged/ (every chosen one must be representable)."""
    study_dir = Path(study_dir)
    if top < 1:
        raise ConfigError(f"export: --top must be >= 1, got {top}")
    if form not in FORMS:
        raise ConfigError(f"export: --format {form!r} unknown; use one of {', '.join(FORMS)}")
    out = Path(output) if output else study_dir / "export"
    if study_dir.resolve().is_relative_to(out.resolve()):
        raise ConfigError(f"export: --output {str(out)!r} holds the study itself; choose another --output")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"export: {str(out)!r} already holds files; pass --overwrite or choose another --output")
        refuse_study_dir(out, "--output")
    options = StudyOptions.load(study_dir)
    objectives = options.parsed_objectives
    every = study_rows(study_dir)
    # Once finalists ran, configurations rank by the median over their seeds (each exported
    # from its best seed's checkpoint); before, by the search's trials.
    groups = finalist_groups(every, objectives)
    candidates = groups if groups else [r for r in every if r["status"] in SELECTABLE]
    rows = [r for r in candidates if r["checkpoint"]]
    if not rows:
        raise ConfigError(f"export: no finished trial with a checkpoint in {str(study_dir)!r}; run or resume the study")
    chosen = pareto_front(rows, objectives) if pareto else rank_top(rows, objectives[0], top)
    missing = [r["trial_id"] for r in chosen if not (Path(r["checkpoint"]) / WEIGHTS).is_file()]
    if missing:
        raise ConfigError(f"export: the checkpoint of trial {missing[0]} is gone; was the study directory moved?")
    # Every adapter is built before anything is written: one that peft cannot hold fails the export.
    adapters = [run_adapter(r["checkpoint"]) for r in chosen] if form == "peft" else []
    merged = [merged_model(r["checkpoint"]) for r in chosen] if form == "merged" else []
    names = []
    with staged_directory(out) as staging:
        for rank, row in enumerate(chosen, start=1):
            name = f"{rank:02d}-{row['trial_id']}"
            write_run(row, options, staging / name)
            if adapters:
                write_peft_adapter(*adapters[rank - 1], staging / name)
            if merged:
                write_merged_model(merged[rank - 1], row["checkpoint"], staging / name / MERGED_DIR)
            names.append(name)
        summary = [
            {"rank": i + 1, "dir": n, **_summary(r, objectives)}
            for i, (n, r) in enumerate(zip(names, chosen, strict=True))
        ]
        (staging / "exported.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return [out / n for n in names]


def _summary(row: dict[str, Any], objectives: list[Objective]) -> dict[str, Any]:
    """What exported.json says of one exported run. `dev_score` is that run's own best dev score in
    every file (as in its config.json); a finalist's medians over its seeds are `<metric>_median`."""
    summary = {
        "trial_id": row["trial_id"],
        "status": row["status"],
        **{o.metric: objective_value(row, o.metric) for o in objectives},
        "trainable_params": row["trainable_params"],
    }
    if row.get("finalist_of"):
        summary.update(
            {f"{o.metric}_median": objective_value(row, o.metric) for o in objectives},
            dev_score=row["checkpoint_dev_score"],  # the exported seed's own
            finalist_of=row["finalist_of"],
            seeds=row["seeds"],
            seed=row.get("seed"),
            **{f"{o.metric}_{end}": row[f"{o.metric}_{end}"] for o in objectives for end in ("min", "max")},
            test_median=row["test_median"],
        )
    return summary


def write_run(row: dict[str, Any], options: StudyOptions, directory: Path) -> None:
    """A run directory from a trial: its checkpoint (weights + config.json) and config.yaml."""
    directory.mkdir(parents=True)
    checkpoint = Path(row["checkpoint"])
    shutil.copy2(checkpoint / WEIGHTS, directory / WEIGHTS)
    record = read_run(checkpoint)
    record["config"]["train"]["device"] = "auto"  # the trial's device is not the user's
    record["study"] = {"name": options.name, "trial_id": row["trial_id"], "status": row["status"]}
    (directory / CONFIG).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    score = f"dev_score {row['dev_score']}"
    if row.get("finalist_of"):
        score = (
            f"finalist of trial {row['finalist_of']}: median dev_score {row['dev_score']} over {row['seeds']} seeds, "
            f"this seed's {row['checkpoint_dev_score']}"
        )
    header = f"# Exported from study {options.name}, trial {row['trial_id']} ({row['status']}, {score}).\n# Retrain: autoprompt train --config config.yaml; serve: autoprompt predict {directory.name}\n"
    (directory / "config.yaml").write_text(header + yaml.safe_dump(record["config"], sort_keys=False), encoding="utf-8")
