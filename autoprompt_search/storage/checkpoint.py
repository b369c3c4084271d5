"""Save and reload a trained trial: trainable weights as safetensors plus a JSON config.

Only the prompt/generator and head parameters are written (the backbone is frozen and is
reloaded from its own source), so a run directory is kilobytes to a few megabytes.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from autoprompt_search import __version__
from autoprompt_search.config import ExperimentConfig
from autoprompt_search.errors import ConfigError
from autoprompt_search.training.evaluation import predict_split
from autoprompt_search.training.loop import TrainingState, TrainResult
from autoprompt_search.training.metrics import classification_metrics
from autoprompt_search.training.workspace import (
    Workspace,
    build_model,
    model_workspace,
    prepare_workspace,
    resolve_device,
)

WEIGHTS = "prompt.safetensors"
CONFIG = "config.json"
TRAINING_TENSORS = "training_state.safetensors"  # resumable checkpoints only
TRAINING_META = "training_state.json"


def save_training_state(state: TrainingState, directory: str | Path) -> None:
    """Add a resumable training state (safetensors + JSON) to a checkpoint directory."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.tensors.items()}, str(out / (TRAINING_TENSORS + ".tmp")))
    os.replace(out / (TRAINING_TENSORS + ".tmp"), out / TRAINING_TENSORS)
    (out / (TRAINING_META + ".tmp")).write_text(json.dumps(state.meta) + "\n", encoding="utf-8")
    os.replace(out / (TRAINING_META + ".tmp"), out / TRAINING_META)


def load_training_state(directory: str | Path) -> TrainingState | None:
    """The training state in a checkpoint directory, or None when it holds weights only."""
    path = Path(directory)
    if not (path / TRAINING_TENSORS).is_file() or not (path / TRAINING_META).is_file():
        return None
    meta = read_json(path / TRAINING_META, "checkpoint", "the checkpoint is corrupt (delete it to start over)")
    return TrainingState(read_safetensors(path / TRAINING_TENSORS, "checkpoint"), meta)


def resume_from(directory: str | Path, cfg: ExperimentConfig) -> tuple[ExperimentConfig, TrainingState | None]:
    """The configuration and TrainingState a checkpoint directory continues, else (cfg, None).
    The configuration is the one the checkpoint trained (SPT-DARTS: its derived layers, so a
    restart continues that training and does not search again), on `cfg`'s device."""
    state = load_training_state(directory)
    if state is None or not (Path(directory) / CONFIG).is_file():
        return cfg, None
    trained = ExperimentConfig.from_dict(read_run(directory)["config"])
    trained.train.device = cfg.train.device
    return trained, state


def training_step(directory: str | Path) -> int:
    """The step of a checkpoint's training state, to pick the latest; -1 when it holds weights
    only or its state cannot be read (an older checkpoint cut short does not block a newer one)."""
    try:
        meta = json.loads((Path(directory) / TRAINING_META).read_text(encoding="utf-8"))
        return int(meta["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def read_json(path: Path, what: str, fix: str) -> Any:
    """A JSON file this tool wrote; an unreadable or corrupt one is a one-line ConfigError
    ("<what>: <path> is not valid JSON; <fix>")."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path} ({exc.strerror}); {fix}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what}: {path} is not valid JSON; {fix}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what}: {path} is not valid JSON; {fix}") from exc


def read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a truncated or corrupt one is a one-line ConfigError."""
    from safetensors import SafetensorError

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{what}: {path} is not a readable safetensors file ({reason}); the file is corrupt: train or export the run again"
        ) from exc


def save_run(result: TrainResult, directory: str | Path) -> Path:
    """Write `prompt.safetensors` and `config.json` (the trained config, metrics, history, versions)."""
    return save_state(result.best_state, result.config, directory, result.metrics, result.history)


def save_state(
    state: dict[str, torch.Tensor],
    cfg: ExperimentConfig,
    directory: str | Path,
    metrics: dict[str, Any],
    history: list[dict[str, Any]],
) -> Path:
    """`save_run` for a bare trainable state (a study checkpoint mid-training)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in state.items()}
    save_file(tensors, str(out / (WEIGHTS + ".tmp")), metadata={"format": "autoprompt-search"})
    os.replace(out / (WEIGHTS + ".tmp"), out / WEIGHTS)
    record = {
        "autoprompt_search_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "config": cfg.to_dict(),
        "metrics": metrics,
        "history": history,
    }
    tmp = out / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out / CONFIG)
    return out


def read_run(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise ConfigError(f"run: {str(path)!r} not found; give a directory written by `autoprompt train`")
    record = read_json(path, "run", "the run directory is corrupt")
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ConfigError(
            f"run: {path} has no 'config' section; give a directory written by `autoprompt train` or `export` "
            "(a Hugging Face model directory is not a run)"
        )
    return record


def load_weights(model: torch.nn.Module, directory: str | Path) -> None:
    """Load the trainable weights; missing or extra names are an error, never silently ignored."""
    path = Path(directory) / WEIGHTS
    if not path.is_file():
        pickles = sorted(
            p.name for p in Path(directory).glob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")
        )
        if pickles:
            raise ConfigError(
                f"run: {str(path)!r} not found and {pickles[0]} is not loaded: weights load only from safetensors "
                "(a pickle file can run code); save them with safetensors.torch.save_file"
            )
        raise ConfigError(f"run: {str(path)!r} not found; the run directory has no weights")
    state = read_safetensors(path, "run")
    expected = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    found = {n: tuple(t.shape) for n, t in state.items()}
    if found != expected:
        diff = sorted(n for n in set(found) | set(expected) if found.get(n) != expected.get(n))
        raise ConfigError(
            f"run: weights do not match the config ({diff[0]} differs); the run directory is inconsistent"
        )
    model.load_state_dict(state, strict=False)


def load_run(
    directory: str | Path,
    ws: Workspace | None = None,
    device: str = "auto",
    with_data: bool = True,
    data_dir: str | None = None,
) -> tuple[Any, ExperimentConfig, Workspace]:
    """Rebuild the trained model of a run directory; returns (model, config, workspace). Without
    data the workspace holds the model, tokenizer and task but no splits (predicting given texts,
    exporting): the run's data files need not exist. `data_dir`: read the task's files from there
    instead of the run's own data."""
    record = read_run(directory)
    cfg = ExperimentConfig.from_dict(record["config"])
    cfg.train.device = device
    if data_dir:
        cfg.data.data_dir, cfg.data.source = str(Path(data_dir).absolute()), "files"
    if ws is None:
        ws = prepare_workspace(cfg) if with_data else model_workspace(cfg)
    model = build_model(cfg, ws)
    load_weights(model, directory)
    return model.to(resolve_device(device)).eval(), cfg, ws


def predict_run(
    directory: str | Path,
    split: str = "dev",
    ws: Workspace | None = None,
    device: str = "auto",
    data_dir: str | None = None,
) -> tuple[dict[str, Any], torch.Tensor]:
    """Metrics and predictions of a saved run on one split of its data (or of `data_dir`'s files)."""
    model, cfg, ws = load_run(directory, ws, device, data_dir=data_dir)
    if split not in ws.splits:
        raise ConfigError(f"predict: split {split!r} not in this data; use one of {', '.join(ws.splits)}")
    dev = resolve_device(device)
    task = ws.data.task
    preds = predict_split(model, ws.splits[split], cfg.train.eval_batch_size, dev, cfg.train.precision)
    return classification_metrics(preds, ws.splits[split].labels, len(task.labels), task.metric), preds
