"""`deep --form kv --layers all` equals peft's PrefixTuning forward given the same prefix tensors.

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

from autoprompt_search.engine import Batch
from autoprompt_search.prompts import DeepConfig

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
