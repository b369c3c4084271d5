"""One run: what the `train` and `predict` commands do, as library calls (the CLI only parses),
and the Python API for a single configuration.

    from autoprompt_search import load, train

    run = train(output="runs/best", task="trec", method="late", layer=3, steps=300)
    model = load("runs/best")
    model.predict(["How far is the moon?"])   # -> ['NUM']

Keyword arguments are `ExperimentOptions`' fields (the command line's: model, task, data_dir, steps,
lr, method, layers, ...).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from autoprompt_search.config import ExperimentConfig
from autoprompt_search.data import get_task
from autoprompt_search.errors import ConfigError
from autoprompt_search.experiment_options import ExperimentOptions, experiment_from_options, experiment_options
from autoprompt_search.option_fields import api_signature
from autoprompt_search.storage.checkpoint import predict_run, read_run, save_run
from autoprompt_search.storage.staging import refuse_study_dir, staged_directory
from autoprompt_search.training import loop as trainer
from autoprompt_search.training.loop import TrainResult
from autoprompt_search.training.workspace import prepare_workspace, resolve_device


def check_output_dir(output: str | Path, overwrite: bool) -> Path:
    """Fail before any work if the run directory exists (unless overwriting) or cannot be written."""
    out = Path(output)
    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"output: {str(blocker)!r} is a file, not a directory; choose another --output")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"output: {str(out)!r} already holds files; pass --overwrite or choose another --output")
        refuse_study_dir(out, "--output")
    parent = out.parent if not out.exists() else out
    parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.NamedTemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise ConfigError(f"output: cannot write in {str(parent)!r} ({exc.strerror}); choose another --output") from exc
    return out


def train_to_directory(
    cfg: ExperimentConfig,
    output: str | Path,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    on_step: trainer.OnStep | None = None,
) -> TrainResult:
    """Validate, train, and save the run; the directory appears only when training succeeded.
    `progress(line)` gets one line per evaluation (step, training loss, dev score, best so far),
    `on_step(step, steps, loss)` every training step."""
    out = check_output_dir(output, overwrite)
    resolve_device(cfg.train.device)  # a GPU asked for where none exists fails here, before loading
    ws = prepare_workspace(cfg)
    on_eval = evaluation_lines(cfg, progress) if progress else None
    result = trainer.train_experiment(cfg, ws, on_eval=on_eval, on_step=on_step)
    with staged_directory(out) as staging:
        save_run(result, staging)
    return result


def predict_to_file(
    run_dir: str, split: str, device: str, output: str = "", data_dir: str | None = None
) -> dict[str, Any]:
    """Reload a run, evaluate it on `split` (of its data, or of `data_dir`'s files), optionally
    write predictions as JSON lines."""
    metrics, preds = predict_run(run_dir, split, device=device, data_dir=data_dir)
    if output:
        task = read_run(run_dir)["config"]["data"]["task"]
        names = get_task(task).labels
        Path(output).write_text(
            "".join(json.dumps({"index": i, "label": names[int(p)]}) + "\n" for i, p in enumerate(preds))
        )
    return metrics


def read_texts(path: str, columns: list[str], task: str) -> list[str] | list[tuple[str, str]]:
    """The texts of a tsv/csv/jsonl/parquet file to label: `columns` (one, or two for a pair task),
    else the task's own text fields."""
    from autoprompt_search.data.sources import read_rows

    rows = read_rows(path)
    names = columns or list(get_task(task).text_fields[:2])
    present = set(rows[0]) if rows else set()
    missing = [c for c in names if c not in present]
    if rows and missing:
        raise ConfigError(
            f"predict: {path} has no column {missing[0]!r} (it has {', '.join(sorted(present))}); "
            "name the text column with --column"
        )
    if len(names) > 1:
        return [(str(r[names[0]]), str(r[names[1]])) for r in rows]
    return [str(r[names[0]]) for r in rows]


def label_texts(run_dir: str, texts: list[str] | list[tuple[str, str]], device: str) -> list[dict[str, Any]]:
    """Each text with its predicted label and class probabilities."""
    predictor = load(run_dir, device=device)
    out = []
    for text, probs in zip(texts, predictor.probabilities(texts), strict=True):
        out.append({"text": text, "label": top_label(probs), "probabilities": probs})
    return out


def top_label(probabilities: dict[str, float]) -> str:
    """The most probable label (the first of a tie, as argmax)."""
    return max(probabilities, key=probabilities.__getitem__)


def evaluation_lines(cfg: ExperimentConfig, progress: Callable[[str], None]) -> trainer.OnEval:
    """An `on_eval` hook that says each evaluation in one line."""
    started = time.perf_counter()
    steps = cfg.train.steps

    def on_eval(record: dict[str, Any], state: Any, trained: ExperimentConfig) -> None:
        collapsed = " (collapsed: one class)" if record["eval_collapsed"] else ""
        best = record["best_score"]
        best_text = f"{best:.4f} at step {record['best_step']}" if math.isfinite(best) else "none yet"
        progress(
            f"[step {record['step']}/{trained.train.steps or steps}] loss {record['train_loss']:.4f} · "
            f"dev {record['eval_score']:.4f}{collapsed} · best {best_text} · {time.perf_counter() - started:.0f} s"
        )

    return on_eval


def train(
    output: str | Path = "runs/train",
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    on_step: trainer.OnStep | None = None,
    **options: Any,
) -> TrainResult:
    """Train one configuration and save it to `output`; `options` are the `autoprompt train`
    options (ExperimentOptions' fields: `help(train)` lists them); `progress(line)` gets one line
    per evaluation, `on_step(step, steps, loss)` every training step."""
    cfg = experiment_from_options(experiment_options(options))
    return train_to_directory(cfg, output, overwrite, progress, on_step)


train.__signature__ = api_signature(train, [(ExperimentOptions, "train")])  # type: ignore[attr-defined]


class Predictor:
    """A trained run, ready to label texts."""

    def __init__(self, model: Any, cfg: ExperimentConfig, tokenizer: Any, labels: tuple[str, ...], device: Any) -> None:
        self.model, self.cfg, self.tokenizer, self.labels, self.device = model, cfg, tokenizer, labels, device

    def predict(self, texts: str | Sequence[str] | Sequence[tuple[str, str]]) -> list[str]:
        """The predicted label of each text (or text pair, for pair tasks); a string is one text."""
        return [top_label(p) for p in self.probabilities(texts)]

    def probabilities(self, texts: str | Sequence[str] | Sequence[tuple[str, str]]) -> list[dict[str, float]]:
        """Each text's class probabilities, label -> probability; a string is one text."""
        from autoprompt_search.data import Examples, tokenize
        from autoprompt_search.training.evaluation import split_logits

        items = [texts] if isinstance(texts, str) else list(texts)
        if not items:
            return []
        pairs = [t if isinstance(t, tuple) else (t,) for t in items]
        text_b = [p[1] for p in pairs] if len(pairs[0]) > 1 else None
        examples = Examples([p[0] for p in pairs], text_b, [0] * len(pairs))
        append_mask = self.cfg.head.kind == "label_words" and not self.model.backbone.causal
        split = tokenize(self.tokenizer, examples, self.cfg.data.max_length, append_mask, use_cache=False)
        logits = split_logits(self.model, split, self.cfg.train.eval_batch_size, self.device, self.cfg.train.precision)
        probs = logits.softmax(-1).tolist()
        return [dict(zip(self.labels, row, strict=True)) for row in probs]


def load(run_dir: str | Path, device: str = "auto") -> Predictor:
    """A run directory (`autoprompt train` or `export`) as a Predictor; its data files are not needed."""
    from autoprompt_search.storage.checkpoint import load_run

    model, cfg, ws = load_run(run_dir, device=device, with_data=False)
    return Predictor(model, cfg, ws.tokenizer, tuple(ws.data.task.labels), resolve_device(device))
