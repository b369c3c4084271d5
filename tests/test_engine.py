"""The prompt engine against hand-written references that use the Hugging Face model directly."""

from __future__ import annotations

import pytest
import torch
from conftest import DECODERS, ENCODERS, FAMILIES, tiny_configs

from autoprompt_search.backbones import Backbone, BackboneInfo, backbone_from_config
from autoprompt_search.engine.heads import ClassifierHead
from autoprompt_search.engine.model import Batch, PromptedModel
from autoprompt_search.methods import DeepConfig, LateConfig, ProbeConfig, PromptMethod, SlotLayout, build_method
from autoprompt_search.methods.base import BatchContext

ATOL = 1e-5


def make(family: str, method_config: object | None, seed: int = 0) -> PromptedModel:
    bb = backbone_from_config(tiny_configs()[family], seed=seed)
    # no method config: the linear probe
    method = build_method(method_config if method_config is not None else ProbeConfig(), BackboneInfo.of(bb))
    method.init_parameters(bb.word_embeddings, torch.Generator().manual_seed(seed))
    return PromptedModel(bb, method, ClassifierHead(bb, 3, pooler=True)).eval()


def full_batch(b: int = 2, t: int = 6, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 120, (b, t), generator=g)
    return Batch(ids, torch.ones(b, t, dtype=torch.bool))


def reference_from_layer(bb: Backbone, h: torch.Tensor, first: int) -> torch.Tensor:
    """Run blocks first..N-1 with the library's own defaults: no mask (full or causal attention)
    and positions 0..S-1, as the unprompted HF model would on this sequence."""
    s = h.shape[1]
    pos = torch.arange(s)[None, :].expand(h.shape[0], -1)
    kwargs: dict = {}
    if family_of(bb) in ("llama", "qwen2"):
        kwargs = {"position_embeddings": bb.model.rotary_emb(h, position_ids=pos), "position_ids": pos}
    if family_of(bb) == "mpnet":
        kwargs = {"position_bias": bb.model.encoder.compute_position_bias(h)}
    for i in range(first, bb.num_layers):
        out = bb.blocks[i](h, attention_mask=None, **kwargs)
        h = out[0] if isinstance(out, tuple) else out
    return bb.final_norm(h)


def family_of(bb: Backbone) -> str:
    return bb.config.model_type


def hf_inputs_embeds_forward(bb: Backbone, embeds: torch.Tensor) -> torch.Tensor:
    """The Hugging Face model itself on `inputs_embeds` (positions 0..S-1, its own masks)."""
    out = bb.model(inputs_embeds=embeds)
    return out.last_hidden_state


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layers", [(0,), (1, 3), (0, 1, 2, 3), (2,)])
def test_forward_backward_every_family(family: str, layers: tuple[int, ...]) -> None:
    model = make(family, DeepConfig(layers=layers, length=3)).train()
    batch = full_batch()
    batch.text_mask[1, 4:] = False
    logits = model(batch)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert model.method.prompts.grad is not None and model.method.prompts.grad.abs().sum() > 0
    # every layer in the set gets its own gradient
    assert (model.method.prompts.grad.flatten(1).abs().sum(1) > 0).all()
    assert all(p.grad is None for p in model.backbone.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_input_prompt_equals_hf_inputs_embeds(family: str) -> None:
    """Prompt tuning (S = {0}) equals the HF model run on [prompt; word embeddings]."""
    model = make(family, DeepConfig(layers=(0,), length=4))
    batch = full_batch()
    h, _ = model.hidden_states(batch)
    word = model.backbone.word_embeddings(batch.input_ids)
    prompt = model.method.prompts[0].expand(2, -1, -1)
    ref = hf_inputs_embeds_forward(model.backbone, torch.cat([prompt, word], 1))
    if family == "gpt2":  # GPT2Model's last_hidden_state includes ln_f, as ours does
        pass
    torch.testing.assert_close(h, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("k", [1, 3])
def test_deep_prompt_at_layer_k_equals_layer_by_layer_reference(family: str, k: int) -> None:
    model = make(family, DeepConfig(layers=(k,), length=3))
    bb = model.backbone
    batch = full_batch()
    h, _ = model.hidden_states(batch)
    with torch.no_grad():
        states = bb.model(input_ids=batch.input_ids, output_hidden_states=True).hidden_states
    prompt = model.method.prompts[0].expand(2, -1, -1)
    ref = reference_from_layer(bb, torch.cat([prompt, states[k]], 1), k)
    torch.testing.assert_close(h, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_split_position_equals_reordered_sequence(family: str) -> None:
    """position=split, j=2 equals the HF model on P[2:] + input + P[:2]."""
    length, j = 5, 2
    model = make(family, DeepConfig(layers=(0,), length=length, position="split", split_at=j))
    batch = full_batch()
    h, _ = model.hidden_states(batch)
    p = model.method.prompts[0].expand(2, -1, -1)
    word = model.backbone.word_embeddings(batch.input_ids)
    ref = hf_inputs_embeds_forward(model.backbone, torch.cat([p[:, j:], word, p[:, :j]], 1))
    t = word.shape[1]
    torch.testing.assert_close(h[:, length:], ref[:, length - j : length - j + t], atol=ATOL, rtol=0)  # text
    torch.testing.assert_close(h[:, j:length], ref[:, : length - j], atol=ATOL, rtol=0)  # P[j:]
    torch.testing.assert_close(h[:, :j], ref[:, length - j + t :], atol=ATOL, rtol=0)  # P[:j]
    if family in DECODERS:  # the head reads the logically last token: the last suffix slot
        torch.testing.assert_close(model.head_states(batch), ref[:, -1], atol=ATOL, rtol=0)


def constant_npg(model: PromptedModel, prompt: torch.Tensor) -> None:
    """Make an NPG generator output `prompt` (L, d) for every instance."""
    gen = model.method.generator
    with torch.no_grad():
        gen.down.weight.zero_()
        gen.down.bias.zero_()
        gen.up.weight.zero_()
        gen.up.bias.copy_(prompt.flatten())


@pytest.mark.parametrize("family", FAMILIES)
def test_lpt_with_a_constant_generator_equals_deep_prompts_at_its_layer(family: str) -> None:
    deep = make(family, DeepConfig(layers=(2,), length=4))
    late = make(family, LateConfig(layer=2, length=4, dropout=0.0, bottleneck=8))
    constant_npg(late, deep.method.prompts[0].detach())
    batch = full_batch()
    batch.text_mask[0, 4:] = False
    torch.testing.assert_close(late.hidden_states(batch)[0], deep.hidden_states(batch)[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("generator", ["npg", "appg", "mppg"])
def test_lpt_at_layer_k_equals_reference(family: str, generator: str) -> None:
    k = 2
    model = make(family, LateConfig(layer=k, length=3, generator=generator, dropout=0.0, bottleneck=8))
    bb = model.backbone
    batch = full_batch()
    h, _ = model.hidden_states(batch)
    with torch.no_grad():
        states = bb.model(input_ids=batch.input_ids, output_hidden_states=True).hidden_states
    prompt = model.method.generator(states[k], batch.text_mask)
    ref = reference_from_layer(bb, torch.cat([prompt, states[k]], 1), k)
    torch.testing.assert_close(h, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_does_not_change_real_tokens(family: str) -> None:
    model = make(family, DeepConfig(layers=(0, 2), length=3, position="split", split_at=1))
    short = full_batch(1, 4, seed=3)
    padded = Batch(
        torch.cat([short.input_ids, torch.full((1, 3), 7)], 1),
        torch.cat([short.text_mask, torch.zeros(1, 3, dtype=torch.bool)], 1),
    )
    torch.testing.assert_close(model.head_states(padded), model.head_states(short), atol=ATOL, rtol=0)
    torch.testing.assert_close(model.hidden_states(padded)[0][:, :7], model.hidden_states(short)[0], atol=ATOL, rtol=0)


class PerRowPrompt(PromptMethod):
    """A test method with per-row lengths and start layers, as dynamic prompting and fused groups need."""

    name = "per-row"
    config_class = object

    def __init__(self, bb: Backbone, live: torch.Tensor, start: torch.Tensor, after: torch.Tensor) -> None:
        torch.nn.Module.__init__(self)
        self.live, self.start, self.after = live, start, after
        self.prompts = torch.nn.Parameter(torch.randn(bb.num_layers, live.shape[1], bb.hidden_size))

    @property
    def length(self) -> int:
        return self.live.shape[1]

    @property
    def start_layer(self) -> int:
        return int(self.start.min())

    def layout(self, ctx: BatchContext) -> SlotLayout:
        return SlotLayout(self.live, self.after, self.start)

    def inject(self, layer, slots, text, ctx):
        return self.prompts[layer].expand(text.shape[0], -1, -1)


@pytest.mark.parametrize("family", FAMILIES)
def test_dead_slots_cannot_change_the_output(family: str) -> None:
    bb = backbone_from_config(tiny_configs()[family])
    live = torch.tensor([[True, True, False, False], [True, True, True, True]])
    after = torch.zeros(2, 4, dtype=torch.bool)
    model = PromptedModel(bb, PerRowPrompt(bb, live, torch.tensor([0, 0]), after), ClassifierHead(bb, 2, True)).eval()
    batch = full_batch()
    before = model.hidden_states(batch)[0][0, 4:]
    with torch.no_grad():
        model.method.prompts[:, 2:] += 10.0  # change only row 0's dead slots (and row 1's live ones)
    after_change = model.hidden_states(batch)[0]
    torch.testing.assert_close(after_change[0, 4:], before, atol=ATOL, rtol=0)
    # Row 0 with 2 live slots equals a 2-slot prompt alone.
    short = PromptedModel(bb, PerRowPrompt(bb, live[:1, :2], torch.tensor([0]), after[:1, :2]), model.head).eval()
    with torch.no_grad():
        short.method.prompts.copy_(model.method.prompts[:, :2])
    one = Batch(batch.input_ids[:1], batch.text_mask[:1])
    torch.testing.assert_close(short.hidden_states(one)[0][:, 2:], after_change[0:1, 4:], atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_rows_starting_at_different_layers_match_each_alone(family: str) -> None:
    """A fused-group batch: row 0 prompted from block 0, row 1 from block 2, each as if alone."""
    bb = backbone_from_config(tiny_configs()[family])
    live = torch.ones(2, 3, dtype=torch.bool)
    after = torch.zeros(2, 3, dtype=torch.bool)
    mixed = PromptedModel(bb, PerRowPrompt(bb, live, torch.tensor([0, 2]), after), ClassifierHead(bb, 2, True)).eval()
    batch = full_batch()
    got = mixed.hidden_states(batch)[0]
    for row, start in ((0, 0), (1, 2)):
        alone = PromptedModel(bb, PerRowPrompt(bb, live[:1], torch.tensor([start]), after[:1]), mixed.head).eval()
        with torch.no_grad():
            alone.method.prompts.copy_(mixed.method.prompts)
        one = Batch(batch.input_ids[row : row + 1], batch.text_mask[row : row + 1])
        torch.testing.assert_close(got[row : row + 1, 3:], alone.hidden_states(one)[0][:, 3:], atol=ATOL, rtol=0)


def test_unsupported_architecture_lists_supported() -> None:
    from transformers import T5Config

    with pytest.raises(ValueError, match=r"not supported; use one of .*bert.*gpt2.*llama"):
        backbone_from_config(T5Config(d_model=16, num_layers=1, num_heads=2, d_ff=16, d_kv=8))


@pytest.mark.parametrize("family", ENCODERS)
def test_encoder_head_reads_first_text_token(family: str) -> None:
    model = make(family, DeepConfig(layers=(0,), length=3))
    batch = full_batch()
    h, _ = model.hidden_states(batch)
    torch.testing.assert_close(model.head_states(batch), h[:, 3])


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_mean_pooling_head_reads_the_mean_of_the_real_text_tokens(family: str) -> None:
    model = make(family, DeepConfig(layers=(0, 2), length=3))
    bb = model.backbone
    model.head = ClassifierHead(bb, 3, pooler=True, pooling="mean")
    assert model.head.pool is None  # the pretrained pooler was trained on one token
    batch = full_batch(b=2, t=6)
    batch.text_mask[1, 4:] = False
    with torch.no_grad():
        h, _ = model.hidden_states(batch)
        text = h[:, 3:]  # (B, T, d): after the 3 prompt slots
        expected = torch.stack([text[0].mean(0), text[1, :4].mean(0)])
        torch.testing.assert_close(model.head_states(batch), expected)
        torch.testing.assert_close(model(batch), model.head.linear(expected))


@pytest.mark.parametrize("init", ["vocab", "normal"])
def test_input_prompt_init_vocab_samples_embeddings_normal_draws_unit_gaussians(init: str) -> None:
    model = make("bert", DeepConfig(layers=(0,), length=64, init=init))
    prompt = model.method.prompts[0]  # (L, d)
    rows_in_vocab = (prompt[:, None, :] == model.backbone.word_embeddings.weight[None]).all(-1).any(-1)
    if init == "vocab":
        assert rows_in_vocab.all()
    else:
        assert not rows_in_vocab.any() and abs(prompt.std().item() - 1.0) < 0.1
