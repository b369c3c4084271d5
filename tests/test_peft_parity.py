"""Our forms of peft's methods equal peft's forward given the same tensors.

- `deep --form kv --layers all` equals peft's PrefixTuning;
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
