"""Runs as peft adapters: what peft can hold loads with `PeftModel.from_pretrained` and gives our
logits; the rest is refused in one line that says why.

The load test needs peft with a transformers version its prefix tuning supports (peft 0.21.2
with transformers 5.17; with 5.24 it raises "Model does not support past key values" on BERT):
it skips elsewhere and says why.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import peft_and_our_logits

from autoprompt_search.config import ExperimentConfig
from autoprompt_search.runs import train_to_directory
from autoprompt_search.storage.peft_format import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    refusal,
    run_adapter,
    write_peft_adapter,
)

EVERY = [0, 1, 2, 3]


def cfg_of(method: dict, head: dict | None = None) -> ExperimentConfig:
    return ExperimentConfig.from_dict({"method": method, "head": head or {}})


@pytest.mark.parametrize(
    ("method", "head", "model_type", "why"),
    [
        ({"name": "deep", "layers": [0], "length": 4}, None, "bert", "train with head.pooling: first to match it"),
        ({"name": "deep", "layers": [0], "length": 4}, {"pooling": "first"}, "bert", ""),  # peft's prompt tuning
        ({"name": "deep", "layers": [0], "length": 4}, {"pooling": "first"}, "roberta", "not a linear layer"),
        ({"name": "deep", "layers": [1, 3], "form": "kv"}, None, "bert", "prefixes every layer; this run prompts layers [1, 3]"),
        ({"name": "deep", "layers": EVERY}, None, "bert", "(prefix tuning), not hidden-state prompts"),
        ({"name": "late", "layer": 2}, None, "bert", "(prefix tuning), not the late method"),
        # Every reason at once: hidden-state prompts, at layers 1-3, pooled by the mean.
        ({"name": "deep", "layers": [1, 2, 3]}, {"pooling": "mean"}, "bert",
         "not hidden-state prompts; peft's prefix tuning prefixes every layer; this run prompts layers [1, 2, 3]; "
         "peft's BertForSequenceClassification reads [CLS] through the pooler; this run's head pools mean"),
        ({"name": "deep", "layers": EVERY, "form": "kv"}, {"pooling": "mean"}, "bert", "reads [CLS] through the pooler"),
        ({"name": "deep", "layers": EVERY, "form": "kv"}, None, "roberta", "classifier for roberta is not a linear"),
        ({"name": "deep", "layers": EVERY, "form": "kv"}, None, "bert", ""),  # peft's prefix tuning
        ({"name": "lora", "layers": [1, 3], "targets": "all"}, None, "bert", ""),  # peft's LoRA
        ({"name": "lora"}, {"pooling": "mean"}, "bert", "reads [CLS] through the pooler; this run's head pools mean"),
        ({"name": "lora"}, None, "gpt2", "classifier for gpt2 is not a linear"),
    ],
)  # fmt: skip
def test_what_peft_cannot_hold_is_refused_with_the_reason(method: dict, head: dict, model_type: str, why: str) -> None:
    reason = refusal(cfg_of(method, head), model_type, num_layers=4)
    assert (why in reason and "\n" not in reason) if why else reason == ""


def test_a_model_without_a_pooler_is_refused(tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path) -> None:
    """The tiny BERT is saved from an MLM model (no pooler): our head reads the raw first token,
    peft's classifier would read it through a random pooler, so nothing is written."""
    from autoprompt_search.errors import ConfigError

    cfg = ExperimentConfig.from_dict(
        {
            "model": tiny_model_dir,
            "data": {"task": "sst2", "data_dir": tiny_sst_dir, "max_length": 16},
            "method": {"name": "deep", "layers": [0], "length": 3},
            "head": {"pooling": "first"},
            "train": {"steps": 2, "batch_size": 8, "eval_every": 2, "device": "cpu"},
        }
    )
    run = tmp_path / "run"
    train_to_directory(cfg, run)
    with pytest.raises(ConfigError, match="checkpoint has no pooler, so BertForSequenceClassification would start"):
        run_adapter(run)


@pytest.mark.parametrize("reparam", [0, 16])
@pytest.mark.parametrize(
    ("method", "head", "peft_type"),
    [
        # head.pooling: first reads the first prompt slot, as peft's classifier reads the first virtual token.
        ({"name": "deep", "layers": [0], "length": 3}, {"pooling": "first"}, "PROMPT_TUNING"),
        ({"name": "deep", "layers": EVERY, "length": 3, "form": "kv"}, {}, "PREFIX_TUNING"),
    ],
    ids=["input-prompt", "kv-prefix"],
)
def test_a_run_loads_in_peft_with_our_logits(
    method: dict, head: dict, peft_type: str, reparam: int, bert_with_pooler: str, tiny_sst_dir: str, tmp_path: Path
) -> None:
    peft = pytest.importorskip("peft")
    cfg = ExperimentConfig.from_dict(
        {
            "model": bert_with_pooler,
            "data": {"task": "sst2", "data_dir": tiny_sst_dir, "max_length": 16},
            "method": {**method, "reparam": reparam},
            "head": head,
            "train": {"steps": 3, "batch_size": 8, "eval_every": 3, "device": "cpu", "lr": 0.1},
        }
    )
    run = tmp_path / "run"
    train_to_directory(cfg, run)
    write_peft_adapter(*run_adapter(run), run)
    assert (run / ADAPTER_CONFIG).is_file() and (run / ADAPTER_WEIGHTS).is_file()

    try:
        theirs_model, mine, theirs = peft_and_our_logits(run, bert_with_pooler)
    except ValueError as exc:  # a transformers version peft's prefix tuning does not support
        if peft_type != "PREFIX_TUNING":
            raise
        pytest.skip(f"peft {peft.__version__} prefix tuning unsupported here: {exc}")
    assert theirs_model.peft_config["default"].peft_type.value == peft_type
    assert mine.abs().max() > 0.05  # a trained head, not zeros
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("targets", ["query,value", "all"])
def test_a_lora_run_loads_in_peft_with_our_logits(
    targets: str, bert_with_pooler: str, tiny_sst_dir: str, tmp_path: Path
) -> None:
    """A LoRA run at a layer subset (every target: attention output and FFN output are both
    `*.output.dense` in BERT, told apart by the expression) loads as peft's LoRA with our logits."""
    pytest.importorskip("peft")
    cfg = ExperimentConfig.from_dict(
        {
            "model": bert_with_pooler,
            "data": {"task": "sst2", "data_dir": tiny_sst_dir, "max_length": 16},
            "method": {"name": "lora", "layers": [1, 3], "targets": targets, "rank": 3, "alpha": 5.0},
            "train": {"steps": 3, "batch_size": 8, "eval_every": 3, "device": "cpu", "lr": 0.05},
        }
    )
    run = tmp_path / "run"
    train_to_directory(cfg, run)
    write_peft_adapter(*run_adapter(run), run)
    theirs_model, mine, theirs = peft_and_our_logits(run, bert_with_pooler)
    assert theirs_model.peft_config["default"].peft_type.value == "LORA"
    updated = {n.split(".lora_A")[0] for n, _ in theirs_model.named_parameters() if ".lora_A." in n}
    assert len(updated) == 2 * (2 if targets == "query,value" else 6)  # two layers: exactly our projections
    assert mine.abs().max() > 0.05
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)
