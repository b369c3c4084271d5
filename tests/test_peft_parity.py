"""Our forms of peft's methods equal peft's forward given the same tensors.

- `deep --form kv --layers all` equals peft's PrefixTuning;
- `lora` at a layer subset equals peft's LoRA on the same projections (BERT, Llama, Qwen2);
- `deep --layers 0 --init normal` with a first-slot head (the benchmark's `prompt-tuning-as-peft`)
  equals peft's PromptTuning for sequence classification, logits and gradients, dropout included.

Runs only where peft is installed with a transformers version its prefix tuning supports (peft
0.21.2 works with transformers 5.17 and raises "Model does not support past key values" with 5.24
on BERT); elsewhere it skips and says why. The project's own kv tests (test_kv_prefix.py) do not
need peft.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_configs
from test_engine import full_batch, make

from autoprompt_search.backbones import BackboneInfo, backbone_from_config
from autoprompt_search.engine.heads import ClassifierHead
from autoprompt_search.engine.model import Batch, PromptedModel
from autoprompt_search.methods import DeepConfig, build_method

peft = pytest.importorskip("peft")

LENGTH = 3


def peft_prefix_model(family: str, prefix: torch.Tensor) -> torch.nn.Module:
    """A peft PrefixTuning model over the same tiny backbone, its prefix table set from ours.

    Ours: (N, 2, L, H*hd), layer-major. peft's PrefixEncoder: an embedding of L rows, each
    N*2*H*hd wide, read as (N*2, H, hd) per token, keys then values per layer.
    """
    import copy

    from transformers import AutoModel

    base = AutoModel.from_config(copy.deepcopy(tiny_configs()[family]))  # untouched by our engine
    base.load_state_dict(make(family, None).backbone.model.state_dict())
    config = peft.PrefixTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=LENGTH)
    try:
        model = peft.get_peft_model(base, config)
    except ValueError as exc:  # a transformers version peft's prefix tuning does not support
        pytest.skip(f"peft {peft.__version__} prefix tuning unsupported here: {exc}")
    table = prefix.permute(2, 0, 1, 3).reshape(LENGTH, -1)  # (L, N*2*H*hd)
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.copy_(table)
    return model.eval()


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_kv_all_layers_equals_peft_prefix_tuning(family: str) -> None:
    n = tiny_configs()[family].num_hidden_layers
    ours = make(family, DeepConfig(layers=tuple(range(n)), length=LENGTH, form="kv"))
    reference = peft_prefix_model(family, ours.method.prefix.detach())
    batch = full_batch(b=2, t=6)
    batch.text_mask[1, 4:] = False  # padding: peft masks it through the attention mask
    with torch.no_grad():
        mine, _ = ours.hidden_states(Batch(batch.input_ids, batch.text_mask))
        theirs = reference(input_ids=batch.input_ids, attention_mask=batch.text_mask.long()).last_hidden_state
    real = batch.text_mask
    torch.testing.assert_close(mine[real], theirs[real], atol=1e-5, rtol=1e-4)


def test_input_prompt_with_first_slot_head_equals_peft_prompt_tuning() -> None:
    """peft's PromptTuning (SEQ_CLS) on BertForSequenceClassification against `deep --layers 0`
    with pooling `first` and dropout 0.1: same prompt, pooler and classifier -> same logits and
    prompt gradient in eval mode, and the same logits in train mode (backbone dropout 0.1 drawn
    from the same global stream; the heads' dropout is switched off on both sides because ours
    draws from a stream of its own)."""
    import copy

    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(tiny_configs()["bert"])
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.1
    config.num_labels = 3
    backbone = backbone_from_config(copy.deepcopy(config))
    method = build_method(DeepConfig(layers=(0,), length=LENGTH, init="normal"), BackboneInfo.of(backbone))
    method.init_parameters(backbone.word_embeddings, torch.Generator().manual_seed(0))
    head = ClassifierHead(backbone, 3, pooler=True, pooling="first", dropout=0.1)
    ours = PromptedModel(backbone, method, head)

    hf = AutoModelForSequenceClassification.from_config(config)
    hf.bert.load_state_dict(backbone.model.state_dict())
    hf.classifier.load_state_dict(head.linear.state_dict())
    reference = peft.get_peft_model(hf, peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=LENGTH))
    prompt = reference.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        prompt.copy_(method.prompts[0])

    batch = full_batch(b=2, t=6)
    batch.text_mask[1, 4:] = False
    labels = torch.tensor([0, 2])

    def theirs() -> torch.Tensor:
        return reference(input_ids=batch.input_ids, attention_mask=batch.text_mask.long()).logits

    ours.eval(), reference.eval()
    mine, other = ours(batch), theirs()
    torch.testing.assert_close(mine, other, atol=1e-5, rtol=1e-4)
    torch.nn.functional.cross_entropy(mine, labels).backward()
    torch.nn.functional.cross_entropy(other, labels).backward()
    torch.testing.assert_close(method.prompts.grad[0], prompt.grad, atol=1e-6, rtol=1e-4)

    head.dropout.p = hf.dropout.p = 0.0
    ours.train(), reference.train()
    torch.manual_seed(5)
    mine = ours(batch)
    torch.manual_seed(5)
    torch.testing.assert_close(mine, theirs(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("family", "blocks"), [("bert", "encoder.layer"), ("llama", "layers"), ("qwen2", "layers")])
@pytest.mark.parametrize("targets", ["query,value", "all"])
def test_lora_equals_peft_lora_given_the_same_a_and_b(family: str, blocks: str, targets: str) -> None:
    """`lora` at a layer subset equals peft's LoraConfig on the same projections with the same A and
    B (random B: a zero B would hide a wrong update), hidden states and gradients of A and B."""
    import copy
    import re

    from transformers import AutoModel

    from autoprompt_search.methods.lora import LoraConfig

    ours = make(family, LoraConfig(layers=(1, 3), targets=targets, rank=3, alpha=5.0, dropout=0.0))
    method = ours.method
    with torch.no_grad():
        for up in method.up:
            up.normal_(generator=torch.Generator().manual_seed(1))
    base = AutoModel.from_config(copy.deepcopy(tiny_configs()[family]))
    base.load_state_dict(make(family, None).backbone.model.state_dict())
    paths = "|".join(re.escape(site.path) for _, site, _, _ in method.sites)
    config = peft.LoraConfig(r=3, lora_alpha=5.0, target_modules=rf"{re.escape(blocks)}\.(1|3)\.({paths})")
    reference = peft.get_peft_model(base, config).eval()
    modules = dict(reference.named_modules())
    with torch.no_grad():
        for index, layer in enumerate(method.layers):
            for s, (_, site, _, _) in enumerate(method.sites):
                module = modules[f"base_model.model.{blocks}.{layer}.{site.path}"]
                module.lora_A["default"].weight.copy_(method.down[s][index])
                module.lora_B["default"].weight.copy_(method.up[s][index])
    batch = full_batch(b=2, t=6)
    mine, _ = ours.hidden_states(batch)
    theirs = reference(input_ids=batch.input_ids, attention_mask=batch.text_mask.long()).last_hidden_state
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)
    weights = torch.randn(mine.shape, generator=torch.Generator().manual_seed(2))  # (a norm's sum of squares is flat)
    (mine * weights).sum().backward()
    (theirs * weights).sum().backward()
    for s, (_, site, _, _) in enumerate(method.sites):
        module = modules[f"base_model.model.{blocks}.3.{site.path}"]
        for mine_grad, theirs_grad in ((method.down[s].grad[1], module.lora_A["default"].weight.grad),
                                       (method.up[s].grad[1], module.lora_B["default"].weight.grad)):  # fmt: skip
            scale = theirs_grad.abs().max().item()  # float32 rounding of a large loss's gradient
            torch.testing.assert_close(mine_grad, theirs_grad, atol=1e-5 * scale, rtol=1e-4)
