"""A LoRA run as a plain transformers model: every update folded into its weight (W + (alpha/r) B A)
and our classifier as the model's own, so `AutoModelForSequenceClassification.from_pretrained`
predicts what the run predicts with no adapter and no extra cost at inference.

As with the peft export, the head must be one the family's sequence classifier computes: a linear
layer on the pooled first token of a BERT-family encoder (`peft_format.head_refusals` says why not).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoprompt_search.errors import ConfigError
from autoprompt_search.methods import method_name
from autoprompt_search.storage.peft_format import head_refusals

MERGED_DIR = "merged"  # inside an exported run directory


def merged_model(run_dir: str | Path) -> Any:
    """The run's LoRA folded into a `*ForSequenceClassification` model (not yet written); ConfigError
    when the run is not LoRA or its head is not the family's classifier."""
    from transformers import AutoModelForSequenceClassification

    from autoprompt_search.backbones import resolve_model
    from autoprompt_search.storage.checkpoint import load_run

    model, cfg, ws = load_run(run_dir, device="cpu", with_data=False)
    name = method_name(cfg.method)
    if name != "lora":
        raise ConfigError(
            f"export --format merged: only a LoRA run folds into the model's weights, this run is {name}; "
            "export it without --format merged"
        )
    backbone = model.backbone
    why = head_refusals(cfg, backbone.model.config.model_type)
    if not why and getattr(backbone.model, "pooler", None) is None:
        why = ["the model's checkpoint has no pooler, so BertForSequenceClassification would start a random one"]
    if why:
        raise ConfigError(f"export --format merged: {'; '.join(why)}; export it without --format merged")
    source = resolve_model(cfg.model).path
    merged = AutoModelForSequenceClassification.from_pretrained(source, num_labels=len(ws.data.task.labels))
    model.method.merge_into(backbone.blocks)  # our copy of the weights, then into the fresh model
    merged.base_model.load_state_dict(backbone.model.state_dict())
    merged.classifier.load_state_dict(model.head.linear.state_dict())
    merged.config.id2label = dict(enumerate(ws.data.task.labels))
    merged.config.label2id = {label: i for i, label in enumerate(ws.data.task.labels)}
    return merged.eval()


def write_merged_model(merged: Any, run_dir: str | Path, directory: Path) -> None:
    """The merged model (safetensors) and the run's tokenizer in `directory`."""
    from transformers import AutoTokenizer

    from autoprompt_search.backbones import resolve_model
    from autoprompt_search.storage.checkpoint import read_run

    merged.save_pretrained(directory, safe_serialization=True)
    source = resolve_model(read_run(run_dir)["config"]["model"]).path
    AutoTokenizer.from_pretrained(source).save_pretrained(directory)
