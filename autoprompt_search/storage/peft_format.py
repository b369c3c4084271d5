"""A run as a peft adapter: `adapter_config.json` + `adapter_model.safetensors` that
`PeftModel.from_pretrained` loads over `AutoModelForSequenceClassification`.

peft can hold three of our configurations exactly, on a BERT-family encoder whose classifier reads
the first position through the pretrained pooler (BertForSequenceClassification's head): key/value
prefixes at every layer (its prefix tuning, head on [CLS]), an input prompt alone (its prompt
tuning: the prompt sits before [CLS], so that classifier reads the first virtual token; ours
does with `head.pooling: first`) and LoRA at any layer set and targets (its LoRA, the projections
named by a regular expression). The rest it cannot, and `peft_adapter` says why in one line:
other families' sequence classifiers are not a linear layer on one token (RoBERTa's has a dense
+ tanh layer, GPT-2's has no bias); mean pooling, label-word heads, deeper hidden-state prompts,
layer subsets and generators have no peft counterpart.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from autoprompt_search.errors import ConfigError
from autoprompt_search.methods import method_name

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def refusal(cfg: Any, model_type: str, num_layers: int) -> str:
    """Every reason peft cannot hold this configuration, joined ('' when it can)."""
    return "; ".join(refusals(cfg, model_type, num_layers))


def refusals(cfg: Any, model_type: str, num_layers: int) -> list[str]:
    method, name = cfg.method, method_name(cfg.method)
    if name == "deep" and method.form == "hidden" and tuple(method.layers) == (0,):
        return _prompt_tuning_refusals(cfg, model_type)
    if name == "lora":
        return head_refusals(cfg, model_type)
    reasons = []
    if getattr(method, "form", None) != "kv":
        what = "hidden-state prompts" if name == "deep" else f"the {name} method"
        reasons.append(f"peft holds an input prompt (prompt tuning) or key/value prefixes (prefix tuning), not {what}")
    layers = getattr(method, "layers", None)
    if layers is not None and tuple(layers) != tuple(range(num_layers)):
        reasons.append(f"peft's prefix tuning prefixes every layer; this run prompts layers {list(layers)}")
    return reasons + head_refusals(cfg, model_type)


def head_refusals(cfg: Any, model_type: str) -> list[str]:
    """Why peft's sequence classifier is not this run's head (none when it is)."""
    reasons = []
    if model_type != "bert":
        reasons.append(
            f"peft's sequence classifier for {model_type} is not a linear layer on the pooled first token "
            "(only BERT-family encoders are exported)"
        )
    head = cfg.head
    if head.kind != "classifier" or head.pooling != "token" or not head.pooler:
        reasons.append(
            f"peft's BertForSequenceClassification reads [CLS] through the pooler; this run's head pools "
            f"{head.pooling}{'' if head.pooler else ' without the pooler'}"
        )
    return reasons


def _prompt_tuning_refusals(cfg: Any, model_type: str) -> list[str]:
    """Why peft's prompt tuning cannot hold this input prompt (none when it can)."""
    reasons = []
    if cfg.method.position != "prefix":
        reasons.append("peft's prompt tuning puts the whole prompt before the input; this run splits it around it")
    if model_type != "bert":
        reasons.append(f"peft's sequence classifier for {model_type} is not a linear layer on the pooled first token")
    head = cfg.head
    if head.kind != "classifier" or head.pooling != "first" or not head.pooler:
        reasons.append(
            "peft's prompt tuning puts the prompt before [CLS] and its classifier reads the first virtual token "
            "through the pooler; train with head.pooling: first to match it"
        )
    return reasons


def peft_adapter(model: Any, cfg: Any, model_path: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter_config, tensors) of a built, loaded model; ConfigError when peft cannot hold it."""
    backbone = model.backbone
    model_type = backbone.model.config.model_type
    why = refusal(cfg, model_type, backbone.num_layers)
    if not why and getattr(backbone.model, "pooler", None) is None:
        # Ours then classifies the raw first token; peft's BertForSequenceClassification would put
        # a randomly initialised pooler before its classifier.
        why = "the model's checkpoint has no pooler, so BertForSequenceClassification would start a random one"
    if why:
        raise ConfigError(f"export --format peft: {why}; export it without --format peft")
    method = model.method
    if method_name(cfg.method) == "lora":
        return _lora_adapter(model, model_path)
    if not method.kv:
        return _prompt_tuning_adapter(model, model_path)
    with torch.no_grad():
        prefix = torch.stack([method.layer_prefix(i) for i in range(backbone.num_layers)])  # (N, 2, L, d)
        length = prefix.shape[2]
        # peft's PrefixEncoder: one row per virtual token holding every layer's key then value.
        table = prefix.permute(2, 0, 1, 3).reshape(length, -1).float().contiguous()  # (L, N*2*d)
        tensors = {
            "prompt_embeddings": table,
            "base_model.classifier.weight": model.head.linear.weight.detach().float().contiguous(),
            "base_model.classifier.bias": model.head.linear.bias.detach().float().contiguous(),
        }
    config = backbone.model.config
    adapter = {
        "peft_type": "PREFIX_TUNING",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": model_path,
        "num_virtual_tokens": length,
        "token_dim": config.hidden_size,
        "encoder_hidden_size": config.hidden_size,
        "num_transformer_submodules": 1,
        "num_attention_heads": config.num_attention_heads,
        "num_layers": backbone.num_layers,
        "prefix_projection": False,  # a reparametrised prefix is exported as the table it computes
        "inference_mode": True,
        "modules_to_save": ["classifier", "score"],
        "revision": None,
    }
    return adapter, tensors


def _prompt_tuning_adapter(model: Any, model_path: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """peft's prompt tuning: the input prompt (L, d) as its prompt embeddings (a reparametrised
    prompt is exported as the values it computes), our classifier as its `classifier`."""
    config = model.backbone.model.config
    with torch.no_grad():
        prompt = model.method.layer_prompt(0).float().contiguous()  # (L, d)
        tensors = {
            "prompt_embeddings": prompt,
            "base_model.classifier.weight": model.head.linear.weight.detach().float().contiguous(),
            "base_model.classifier.bias": model.head.linear.bias.detach().float().contiguous(),
        }
    adapter = {
        "peft_type": "PROMPT_TUNING",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": model_path,
        "num_virtual_tokens": int(prompt.shape[0]),
        "token_dim": config.hidden_size,
        "num_transformer_submodules": 1,
        "num_attention_heads": config.num_attention_heads,
        "num_layers": model.backbone.num_layers,
        "prompt_tuning_init": "RANDOM",
        "inference_mode": True,
        "modules_to_save": ["classifier", "score"],
        "revision": None,
    }
    return adapter, tensors


def _lora_adapter(model: Any, model_path: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """peft's LoRA: each of our (A, B) pairs under the module name BertForSequenceClassification
    gives that projection, the projections chosen by one regular expression (peft full-matches it)."""
    method, config = model.method, model.method.config
    tensors = {
        "base_model.model.classifier.weight": model.head.linear.weight.detach().float().contiguous(),
        "base_model.model.classifier.bias": model.head.linear.bias.detach().float().contiguous(),
    }
    with torch.no_grad():
        for index, layer in enumerate(method.layers):
            for s, (_, site, _, _) in enumerate(method.sites):
                name = f"base_model.model.bert.encoder.layer.{layer}.{site.path}"
                tensors[f"{name}.lora_A.weight"] = method.down[s][index].float().contiguous()  # (r, in)
                tensors[f"{name}.lora_B.weight"] = method.up[s][index].float().contiguous()  # (out, r)
    layers = "|".join(str(layer) for layer in method.layers)
    paths = "|".join(re.escape(site.path) for _, site, _, _ in method.sites)
    adapter = {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": model_path,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": rf".*encoder\.layer\.({layers})\.({paths})",
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "use_rslora": False,
        "inference_mode": True,
        "modules_to_save": ["classifier", "score"],
        "revision": None,
    }
    return adapter, tensors


def run_adapter(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The peft adapter of a run directory (`autoprompt train`, a study checkpoint or export)."""
    from autoprompt_search.backbones import resolve_model
    from autoprompt_search.storage.checkpoint import load_run

    model, cfg, _ = load_run(run_dir, device="cpu", with_data=False)
    source = resolve_model(cfg.model)
    return peft_adapter(model, cfg, str(Path(source.path).resolve()) if Path(source.path).exists() else source.path)


def loading_code(run_dir: str | Path) -> str:
    """The peft call that loads the adapter written in `run_dir`."""
    from autoprompt_search.data import get_task
    from autoprompt_search.storage.checkpoint import read_json, read_run

    adapter = read_json(Path(run_dir) / ADAPTER_CONFIG, "peft adapter", "export it again")
    labels = len(get_task(read_run(run_dir)["config"]["data"]["task"]).labels)
    base = adapter["base_model_name_or_path"]
    return (
        f"PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained({base!r}, "
        f"num_labels={labels}), {str(run_dir)!r})"
    )


def write_peft_adapter(adapter: dict[str, Any], tensors: dict[str, torch.Tensor], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (directory / ADAPTER_CONFIG).write_text(json.dumps(adapter, indent=2) + "\n", encoding="utf-8")
