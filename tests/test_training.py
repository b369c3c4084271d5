"""One trial end to end on a tiny model: what trains, what stays frozen, what is reported."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_configs

from autoprompt_search.backbones import BackboneInfo, backbone_from_config
from autoprompt_search.config import ExperimentConfig, TrainConfig
from autoprompt_search.data import DataConfig
from autoprompt_search.errors import TrainingError
from autoprompt_search.methods import DeepConfig, LateConfig, LinearProbe, ProbeConfig, SptConfig
from autoprompt_search.training.loop import train_experiment
from autoprompt_search.training.workspace import build_model, prepare_workspace


def experiment(model_dir: str, data_dir: str, method: object, **train_kw: object) -> ExperimentConfig:
    kw = {"steps": 6, "lr": 1e-2, "batch_size": 8, "eval_every": 3, "seed": 1, "device": "cpu"} | train_kw
    return ExperimentConfig(
        model=model_dir,
        data=DataConfig(task="sst2", data_dir=data_dir, max_length=32),
        method=method,
        train=TrainConfig(**kw),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    "method",
    [
        DeepConfig(layers=(0,), length=4),
        DeepConfig(layers=(1, 3), length=2),
        LateConfig(layer=2, length=3, bottleneck=8),
    ],
    ids=["prompt-tuning", "deep-1-3", "lpt-2"],
)
def test_only_prompt_and_head_change_and_nothing_below_first_layer_gets_gradient(
    tiny_model_dir: str, tiny_sst_dir: str, method: object
) -> None:
    cfg = experiment(tiny_model_dir, tiny_sst_dir, method)
    ws = prepare_workspace(cfg)
    model = build_model(cfg, ws).train()
    frozen_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    trainable_before = {k: v.detach().clone() for k, v in model.trainable_parameters().items()}
    first = model.first_layer
    grad_seen: list[bool] = []
    hooks = [
        b.register_forward_hook(
            lambda m, i, o: grad_seen.append(
                torch.is_grad_enabled() or (o[0] if isinstance(o, tuple) else o).requires_grad
            )
        )
        for b in list(model.backbone.blocks)[:first]
    ]
    batch = ws.splits["train"].batch(torch.arange(8))
    opt = torch.optim.AdamW(model.trainable_parameters().values(), lr=1e-2)
    torch.nn.functional.cross_entropy(model(batch), batch.labels).backward()
    opt.step()
    for h in hooks:
        h.remove()
    assert len(grad_seen) == first and not any(grad_seen)  # blocks below ran without autograd
    assert all(not torch.equal(v, model.trainable_parameters()[k]) for k, v in trainable_before.items())
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, frozen_before[k]), k
    # dropout is off below the first prompted layer even in train mode
    assert all(not b.training for b in list(model.backbone.blocks)[:first])
    assert all(b.training for b in list(model.backbone.blocks)[first:])


def test_train_learns_reports_and_is_seeded(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    cfg = experiment(
        tiny_model_dir, tiny_sst_dir, DeepConfig(layers=(0, 1), length=4), steps=80, eval_every=20, lr=3e-2
    )
    ws = prepare_workspace(cfg)
    a = train_experiment(cfg, ws)
    b = train_experiment(cfg, ws)
    assert a.metrics["dev"] == b.metrics["dev"]  # same seed, same numbers
    assert len(a.history) == 4 and a.metrics["best_step"] in (20, 40, 60, 80)
    assert a.metrics["dev"]["accuracy"] > 0.6  # the tiny task is learnable; chance is 0.5
    assert a.metrics["trainable_params"] == 2 * 4 * 32 + (32 * 2 + 2)
    assert a.metrics["steps_per_s"] > 0 and "test" in a.metrics
    assert set(a.metrics["dev"]) >= {"accuracy", "f1", "mcc", "score", "collapsed"}


def test_a_collapsed_evaluation_never_becomes_the_best(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    # lr 10 on a probe swings the head: evaluations at steps 2 and 6 predict one class (accuracy
    # 0.5 on the balanced dev set), the one at step 4 does not but scores lower (0.458).
    cfg = experiment(
        tiny_model_dir, tiny_sst_dir, ProbeConfig(), steps=6, eval_every=2, lr=10.0, warmup_ratio=0.0, grad_clip=0.0
    )
    result = train_experiment(cfg, prepare_workspace(cfg))
    collapsed = [h["eval_collapsed"] for h in result.history]
    assert collapsed == [True, False, True]
    assert (
        max(h["eval_score"] for h in result.history) == result.history[0]["eval_score"] > result.metrics["dev"]["score"]
    )
    assert result.status == "TERMINATED" and result.metrics["best_step"] == 4 and not result.metrics["collapsed"]


def test_a_run_that_only_collapsed_ends_collapsed(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    cfg = experiment(
        tiny_model_dir, tiny_sst_dir, ProbeConfig(), steps=6, eval_every=2, lr=1000.0, warmup_ratio=0.0, grad_clip=0.0
    )
    result = train_experiment(cfg, prepare_workspace(cfg))
    assert [h["eval_collapsed"] for h in result.history] == [True, True, True]
    assert result.status == "COLLAPSED" and "every evaluation predicted a single class" in result.error
    assert result.metrics["collapsed"] and result.metrics["best_step"] == 6  # the last evaluation, for the record
    assert all(h["best_score"] == float("-inf") for h in result.history)  # no best to report


def test_nan_loss_fails_the_trial_with_a_reason(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    cfg = experiment(tiny_model_dir, tiny_sst_dir, DeepConfig(layers=(0,), length=2), lr=1e30)
    ws = prepare_workspace(cfg)
    with pytest.raises(TrainingError, match="loss became nan"):
        train_experiment(cfg, ws)


def test_gpu_requested_without_gpu_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from autoprompt_search.training.workspace import resolve_device

    with pytest.raises(
        ValueError, match=r"^train.device: cuda requested but no GPU is visible here; use --device cpu$"
    ):
        resolve_device("cuda")


def test_label_word_head_trains_prompt_through_frozen_lm_head(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    cfg = experiment(tiny_model_dir, tiny_sst_dir, DeepConfig(layers=(0,), length=3))
    cfg.head.kind = "label_words"
    cfg.head.label_words = ("bad", "good")
    ws = prepare_workspace(cfg)
    model = build_model(cfg, ws)
    assert set(model.trainable_parameters()) == {"method.prompts"}
    batch = ws.splits["train"].batch(torch.arange(4))
    assert (batch.input_ids == ws.tokenizer.mask_token_id).any(1).all()  # the mask token was appended
    logits = model(batch)
    assert logits.shape == (4, 2)
    logits.sum().backward()
    assert model.method.prompts.grad.abs().sum() > 0


def test_label_word_head_on_decoder() -> None:
    from autoprompt_search.engine.heads import LabelWordHead
    from autoprompt_search.engine.model import Batch, PromptedModel

    bb = backbone_from_config(tiny_configs()["gpt2"], lm_head=True)
    model = PromptedModel(bb, LinearProbe(ProbeConfig(), BackboneInfo.of(bb)), LabelWordHead(bb, [5, 9]))
    ids = torch.randint(0, 120, (2, 5))
    full = bb.lm_head(bb.model(input_ids=ids).last_hidden_state)[:, -1]  # the HF model's next-token logits
    torch.testing.assert_close(model(Batch(ids, torch.ones(2, 5, dtype=torch.bool))), full[:, [5, 9]])


def test_mean_pooling_trains_and_bad_poolings_are_refused(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    from autoprompt_search.engine.heads import HeadConfig
    from autoprompt_search.errors import ConfigError

    cfg = experiment(tiny_model_dir, tiny_sst_dir, DeepConfig(layers=(0,), length=2), lr=0.1)
    cfg.head = HeadConfig(pooling="mean")
    ws = prepare_workspace(cfg)
    assert build_model(cfg, ws).head.pooling == "mean" and train_experiment(cfg, ws).metrics["dev"]["n"] == 48
    with pytest.raises(ConfigError, match="head.pooling: 'max' unknown; use token, mean or first"):
        HeadConfig(pooling="max")
    with pytest.raises(ConfigError, match="mean pooling is for the classifier head"):
        HeadConfig(kind="label_words", pooling="mean")


def test_epochs_set_the_number_of_steps(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    cfg = experiment(tiny_model_dir, tiny_sst_dir, ProbeConfig(), epochs=0.5, eval_every=5)
    ws = prepare_workspace(cfg)
    result = train_experiment(cfg, ws)
    assert len(ws.splits["train"]) == 160 and result.config.train.steps == 10  # 0.5 x 160 rows / batch 8
    assert result.history[-1]["step"] == 10 and result.metrics["train_examples_per_s"] > 0


def test_no_weight_decay_on_biases_and_norms(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    from autoprompt_search.training.recipe import param_groups

    cfg = experiment(tiny_model_dir, tiny_sst_dir, LateConfig(layer=2, length=3, bottleneck=8), weight_decay=0.1)
    named = build_model(cfg, prepare_workspace(cfg)).trainable_parameters()
    decay, plain = param_groups(named, 0.1)
    assert "weight_decay" not in decay and plain["weight_decay"] == 0.0
    names = {id(p): n for n, p in named.items()}
    assert {names[id(p)] for p in plain["params"]} == {n for n, p in named.items() if p.ndim == 1}
    assert any(n.endswith("bias") for n in (names[id(p)] for p in plain["params"]))
    assert all(p.ndim >= 2 for p in decay["params"]) and len(decay["params"]) + len(plain["params"]) == len(named)
    ws = prepare_workspace(cfg)
    groups: list = []
    train_experiment(
        cfg, ws, on_eval=lambda record, state, trained: groups.append(record["training_state"]().meta["param_groups"])
    )
    assert [g["weight_decay"] for g in groups[-1]] == [0.1, 0.0]  # the trainer's AdamW uses these groups


def test_the_gate_search_decays_no_bias_or_norm(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    from autoprompt_search.methods.spt_search import BilevelSearch

    spt = SptConfig(length=2, bottleneck=8, top_k=2, search_steps=2)
    cfg = experiment(tiny_model_dir, tiny_sst_dir, spt, weight_decay=0.1, prefix_cache=False)
    search = BilevelSearch(cfg, prepare_workspace(cfg))
    decay, plain = search.weight_opt.param_groups
    assert decay["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert {id(p) for p in plain["params"]} == {id(p) for p in search.weights if p.ndim == 1} != set()
    gates = {id(p) for p in search.gates}
    assert not gates & {id(p) for g in (decay, plain) for p in g["params"]}  # the gates have their own Adam


def test_first_pooling_is_refused_on_a_decoder() -> None:
    from types import SimpleNamespace

    from autoprompt_search.errors import ConfigError

    cfg = ExperimentConfig.from_dict({"method": {"name": "deep", "layers": [0]}, "head": {"pooling": "first"}})
    labels = SimpleNamespace(task=SimpleNamespace(labels=("neg", "pos")))
    for family, refused in (("gpt2", True), ("bert", False)):
        ws = SimpleNamespace(backbone=backbone_from_config(tiny_configs()[family]), data=labels, tokenizer=None)
        if refused:  # the first slot of a causal model sees nothing after it
            with pytest.raises(ConfigError, match="head.pooling: first reads a position that sees nothing after it"):
                build_model(cfg, ws)  # type: ignore[arg-type]
        else:
            assert build_model(cfg, ws).head.pooling == "first"  # type: ignore[arg-type]


def test_classifier_dropout_is_on_in_training_only_and_refused_for_label_words() -> None:
    from autoprompt_search.engine.heads import ClassifierHead, HeadConfig

    head = ClassifierHead(backbone_from_config(tiny_configs()["bert"]), 3, pooler=False, dropout=0.5)
    token = torch.randn(64, 32)
    assert not torch.equal(head.train()(token), head(token))  # a new mask each call
    assert torch.equal(head.eval()(token), head.linear(token))
    with pytest.raises(ValueError, match="head.dropout: the label_words head has no trainable input to drop"):
        HeadConfig(kind="label_words", dropout=0.1)


def test_on_step_sees_every_step_and_its_loss(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    """`autoprompt train`'s progress bar moves on this hook: once per step, in order, with the loss."""
    cfg = experiment(tiny_model_dir, tiny_sst_dir, DeepConfig(layers=(0,), length=2))
    steps: list[tuple[int, int, float]] = []
    result = train_experiment(cfg, prepare_workspace(cfg), on_step=lambda *s: steps.append(s))
    assert [(s, n) for s, n, _ in steps] == [(i, 6) for i in range(1, 7)]
    losses = [h["train_loss"] for h in result.history]  # each evaluation: the mean loss since the last one
    assert losses[0] == pytest.approx(sum(v for _, _, v in steps[:3]) / 3)
