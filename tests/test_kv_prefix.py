"""`deep` with `form: kv` (P-tuning v2 / prefix tuning) against references written apart from the engine.

Decoders (GPT-2, Llama, Qwen2) and BERT/RoBERTa: each prompted block is run by Hugging Face itself
with a KV cache pre-filled with the learned keys/values (its own concatenation code). MPNet has no
cache: its blocks are written out by hand (attention with the prefix, zero relative bias on it).
"""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES
from test_engine import full_batch, make
from transformers import DynamicCache

from autoprompt_search.backbones import Backbone
from autoprompt_search.engine.model import Batch, PromptedModel
from autoprompt_search.methods import DeepConfig
from autoprompt_search.training.fused import FusedModel

ATOL = 1e-5


def prefix_tensors(model: PromptedModel, layer: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The learned (keys, values) of `layer`, each (B, H_kv, L, hd), read from the parameters."""
    method = model.method
    heads, hd = method.info.kv_shape
    index = method.config.layers.index(layer)
    length = method.config.length
    if method.config.reparam:
        table = method.prefix_out(method.reparam(method.prefix_embedding))  # (L, |S|*2*width)
        kv = table.view(length, len(method.config.layers), 2, heads * hd)[:, index].transpose(0, 1)  # (2, L, w)
    else:
        kv = method.prefix[index]
    kv = kv.view(2, length, heads, hd).transpose(1, 2)  # (2, H, L, hd)
    return kv[0].expand(b, -1, -1, -1), kv[1].expand(b, -1, -1, -1)


def mpnet_block(block: torch.nn.Module, h: torch.Tensor, bias: torch.Tensor, kv: tuple | None) -> torch.Tensor:
    """One MPNet layer written out: self-attention (+ prefix), residual LayerNorm, feed-forward."""
    attn = block.attention.attn
    b, s, _ = h.shape
    hd = attn.attention_head_size

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(b, s, -1, hd).transpose(1, 2)

    q, k, v = split(attn.q(h)), split(attn.k(h)), split(attn.v(h))
    if kv is not None:
        k, v = torch.cat([kv[0], k], 2), torch.cat([kv[1], v], 2)
        bias = torch.cat([bias.new_zeros(*bias.shape[:-1], kv[0].shape[2]), bias], -1)
    probs = torch.softmax(q @ k.transpose(-1, -2) / hd**0.5 + bias, -1)
    context = (probs @ v).transpose(1, 2).reshape(b, s, -1)
    x = block.attention.LayerNorm(attn.o(context) + h)
    return block.output(block.intermediate(x), x)


def reference(model: PromptedModel, batch: Batch) -> torch.Tensor:
    """Final hidden states of the text with the prefixes of `model.method`, all rows real tokens."""
    bb: Backbone = model.backbone
    cfg = model.method.config
    b, t = batch.input_ids.shape
    first, length = cfg.layers[0], cfg.length
    family = bb.config.model_type
    plain = torch.arange(t)[None, :].expand(b, -1)
    shifted = plain + length  # the text follows the prefix's L positions
    word = bb.word_embeddings(batch.input_ids)
    h = bb.embed(word, shifted if first == 0 else plain, None)
    for i in range(bb.num_layers):
        pos = shifted if i >= first else plain
        kv = prefix_tensors(model, i, b) if i in cfg.layers else None
        p = 0 if kv is None else length
        mask = torch.ones(b, 1, t, p + t, dtype=torch.bool)
        if bb.causal:
            mask[..., p:] = torch.ones(t, t, dtype=torch.bool).tril()
        if family == "mpnet":
            bias = bb.model.encoder.relative_attention_bias(
                bb.model.encoder.relative_position_bucket(pos[:, None, :] - pos[:, :, None])
            ).permute(0, 3, 1, 2)
            h = mpnet_block(bb.blocks[i], h, bias, kv)
            continue
        kwargs: dict = {"attention_mask": mask}
        if family in ("llama", "qwen2"):
            kwargs |= {"position_ids": pos, "position_embeddings": bb.model.rotary_emb(h, position_ids=pos)}
        if kv is not None:
            cache = DynamicCache(config=bb.config)
            cache.update(kv[0], kv[1], bb.attention(i).layer_idx)
            kwargs["past_key_values"] = cache
        # HF's own code, with our prefix mechanism off: it concatenates the cached keys itself.
        out = bb.blocks[i](h, **kwargs)
        h = out[0] if isinstance(out, tuple) else out
    return bb.final_norm(h)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layers", [(0, 1, 2, 3), (1, 3), (2,)])
@pytest.mark.parametrize("reparam", [0, 16])
def test_kv_prefix_equals_reference(family: str, layers: tuple[int, ...], reparam: int) -> None:
    model = make(family, DeepConfig(layers=layers, length=3, form="kv", reparam=reparam))
    batch = full_batch()
    with torch.no_grad():
        ours, _ = model.hidden_states(batch)
        ref = reference(model, batch)
    assert ours.shape == ref.shape  # no prompt tokens in the sequence
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_prefix_changes_outputs_and_trains_only_prompted_layers(family: str) -> None:
    model = make(family, DeepConfig(layers=(1, 3), length=3, form="kv"))
    plain = make(family, None)
    batch = full_batch()
    assert not torch.allclose(model.hidden_states(batch)[0], plain.hidden_states(batch)[0], atol=1e-3)
    model.train()
    model(batch).sum().backward()
    grad = model.method.prefix.grad  # (|S|, 2, L, width)
    assert (grad.flatten(1).abs().sum(1) > 0).all()
    assert all(p.grad is None for p in model.backbone.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_cannot_change_kv_outputs(family: str) -> None:
    """A row's real tokens give the same logits whatever padding follows them."""
    model = make(family, DeepConfig(layers=(0, 2), length=4, form="kv"))
    batch = full_batch(b=2, t=8)
    short = Batch(batch.input_ids[:, :5], batch.text_mask[:, :5].clone())
    padded = Batch(batch.input_ids.clone(), batch.text_mask.clone())
    padded.text_mask[:, 5:] = False
    padded.input_ids[:, 5:] = 7
    with torch.no_grad():
        torch.testing.assert_close(model(short), model(padded), atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_kv_members_equal_alone(family: str) -> None:
    """A kv member beside a shorter kv member, a hidden-form member and a probe gives its own logits."""
    members = [
        make(family, DeepConfig(layers=(1, 2, 3), length=4, form="kv"), seed=1),
        make(family, DeepConfig(layers=(1, 3), length=2, form="kv", reparam=8), seed=2),
        make(family, DeepConfig(layers=(1,), length=3), seed=3),
        make(family, None, seed=4),
    ]
    backbone = members[0].backbone
    for m in members[1:]:
        m.backbone = backbone
    fused = FusedModel(members).eval()
    batch = full_batch(b=8, t=6)
    batch.text_mask[1, 3:] = False
    batch.groups = ((0, 2), (1, 2), (2, 2), (3, 2))
    with torch.no_grad():
        together = fused(batch)
        for k, m in enumerate(members):
            rows = slice(2 * k, 2 * k + 2)
            alone = m(Batch(batch.input_ids[rows], batch.text_mask[rows]))
            torch.testing.assert_close(together[rows], alone, atol=ATOL, rtol=1e-4)


def test_kv_form_refuses_a_split_position() -> None:
    from autoprompt_search.errors import ConfigError

    with pytest.raises(ConfigError, match="kv prefix sits before the text only"):
        DeepConfig(layers=(0,), length=4, position="split", split_at=2, form="kv")


@pytest.mark.parametrize("family", FAMILIES)
def test_the_backbones_own_forward_still_masks_padding(family: str) -> None:
    """Our attention name must not change what the Hugging Face model's own forward computes
    (peft, exports and users call it): with padding, it equals an untouched model's."""
    import copy

    from conftest import tiny_configs
    from transformers import AutoModel

    backbone = make(family, None).backbone
    untouched = AutoModel.from_config(copy.deepcopy(tiny_configs()[family]))
    untouched.load_state_dict(backbone.model.state_dict())
    batch = full_batch(b=2, t=6)
    batch.text_mask[1, 4:] = False
    mask = batch.text_mask.long()
    with torch.no_grad():
        ours = backbone.model(input_ids=batch.input_ids, attention_mask=mask).last_hidden_state
        theirs = untouched.eval()(input_ids=batch.input_ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(ours[batch.text_mask], theirs[batch.text_mask], atol=ATOL, rtol=1e-4)
