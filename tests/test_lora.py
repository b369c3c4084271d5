"""LoRA in the engine: every family, alone and in fused groups, and its merged-weights model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import FAMILIES, tiny_configs
from test_engine import full_batch, make

from autoprompt_search.backbones import BackboneInfo, backbone_from_config, backbone_info
from autoprompt_search.config import ExperimentConfig
from autoprompt_search.engine.model import Batch
from autoprompt_search.errors import ConfigError
from autoprompt_search.methods import DeepConfig, build_method
from autoprompt_search.methods.kv_lora import KvLoraConfig
from autoprompt_search.methods.lora import LoraConfig
from autoprompt_search.methods.noise import seed_noise
from autoprompt_search.runs import train_to_directory
from autoprompt_search.storage.merged_format import merged_model, write_merged_model
from autoprompt_search.training.fused import FusedModel

ATOL = 1e-5


def lora_model(family: str, config: LoraConfig | KvLoraConfig, seed: int = 0) -> torch.nn.Module:
    """A LoRA model whose B is random (an untrained B is zero and would hide a wrong update)."""
    model = make(family, config, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    method = model.method.updates if isinstance(config, KvLoraConfig) else model.method
    with torch.no_grad():
        for up in method.up:
            up.copy_(torch.randn(up.shape, generator=g))
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_an_untrained_update_leaves_the_model_as_it_is(family: str) -> None:
    frozen = make(family, None)
    lora = make(family, LoraConfig(targets="all", rank=4))
    lora.head.load_state_dict(frozen.head.state_dict())
    batch = full_batch()
    with torch.no_grad():
        torch.testing.assert_close(lora(batch), frozen(batch), atol=0.0, rtol=0.0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("targets", ["query,value", "all"])
def test_forward_equals_the_merged_weights_model(family: str, targets: str) -> None:
    """Our update W x + (alpha/r) B A x equals a model whose W has (alpha/r) B A folded in, on every
    family (GPT-2: column blocks of its fused QKV projection), at a layer subset."""
    lora = lora_model(family, LoraConfig(layers=(1, 3), targets=targets, rank=3, alpha=5.0)).eval()
    merged = make(family, None).eval()
    merged.head.load_state_dict(lora.head.state_dict())
    lora.method.merge_into(merged.backbone.blocks)
    batch = full_batch(b=3, t=6)
    batch.text_mask[1, 4:] = False
    with torch.no_grad():
        ours, theirs = lora(batch), merged(batch)
    assert not torch.allclose(ours, make(family, None).eval()(batch)), "the update changed nothing"
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_rank_targets_and_layers_set_exactly_the_parameters(family: str) -> None:
    config = tiny_configs()[family]
    d = config.hidden_size
    model = make(family, LoraConfig(layers=(0, 2), targets="query,ffn_out", rank=3))
    ffn = config.intermediate_size
    # query: (3, d) + (d, 3); ffn_out: (3, ffn) + (d, 3); at two layers
    assert model.method.num_trainable() == 2 * (3 * (d + d) + 3 * (ffn + d))
    assert model.first_layer == 0
    assert make(family, LoraConfig(layers=(2, 3))).first_layer == 2


def test_blocks_outside_the_layer_set_are_untouched() -> None:
    """A random update at block 2 only: the hidden states entering block 2 are the frozen model's."""
    lora = lora_model("bert", LoraConfig(layers=(2,), targets="all")).eval()
    frozen = make("bert", None).eval()
    batch = full_batch()
    with torch.no_grad():
        torch.testing.assert_close(lora.text_states(batch, 2), frozen.text_states(batch, 2), atol=0.0, rtol=0.0)
        assert not torch.allclose(lora.hidden_states(batch)[0], frozen.hidden_states(batch)[0])


def test_only_the_named_targets_get_gradients() -> None:
    model = lora_model("bert", LoraConfig(layers=(1,), targets="key,output", rank=2)).train()
    model(full_batch()).sum().backward()
    assert [t for t, _, _, _ in model.method.sites] == ["key", "output"]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.method.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_lora_members_equal_alone_with_dropout(family: str) -> None:
    """Members of different ranks, targets, layer sets (and kv, hidden-prompt and probe members) in one batch give
    each its own logits, with LoRA dropout on (each member draws its own masks on its own rows)."""
    configs = [
        LoraConfig(layers=(1, 2, 3), rank=2, dropout=0.3),
        LoraConfig(layers=(1, 3), targets="all", rank=5, alpha=3.0, dropout=0.2),
        DeepConfig(layers=(1, 3), length=3, form="kv"),
        DeepConfig(layers=(1,), length=3),  # prompt slots: the LoRA rows carry dead ones
        KvLoraConfig(prefix_layers=(2, 3), length=2, layers=(1, 2), rank=3, dropout=0.2),
        None,
    ]
    members = [lora_model(family, c, seed=k) if isinstance(c, (LoraConfig, KvLoraConfig)) else make(family, c, seed=k)
               for k, c in enumerate(configs)]  # fmt: skip
    backbone = members[0].backbone
    for m in members[1:]:
        m.backbone = backbone
    fused = FusedModel(members).train()
    batch = full_batch(b=12, t=6)
    batch.text_mask[1, 3:] = False
    batch.groups = ((0, 2), (1, 2), (2, 2), (3, 2), (4, 2), (5, 2))
    for k, m in enumerate(members):
        seed_noise(m, k)
    together = fused(batch)
    for k, m in enumerate(members):
        seed_noise(m, k)
        rows = slice(2 * k, 2 * k + 2)
        alone = m.train()(Batch(batch.input_ids[rows], batch.text_mask[rows]))
        torch.testing.assert_close(together[rows], alone, atol=ATOL, rtol=1e-4)


def test_dropout_draws_differ_per_call_and_follow_the_seed() -> None:
    model = lora_model("bert", LoraConfig(dropout=0.5)).train()
    batch = full_batch()
    seed_noise(model, 0)
    first, second = model(batch), model(batch)
    seed_noise(model, 0)
    assert not torch.allclose(first, second)
    torch.testing.assert_close(model(batch), first, atol=0.0, rtol=0.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rank": 0}, "method.rank: must be a positive integer"),
        ({"targets": "query,gate"}, "method.targets: 'gate' unknown"),
        ({"targets": ""}, "method.targets: '' unknown"),
        ({"alpha": 0.0}, "method.alpha: must be > 0"),
        ({"dropout": 1.0}, r"method.dropout: must be in \[0, 1\)"),
    ],
)
def test_bad_options_name_the_field(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LoraConfig(**options)


def test_a_layer_outside_the_model_is_refused() -> None:
    info = BackboneInfo.of(backbone_from_config(tiny_configs()["bert"]))
    with pytest.raises(ConfigError, match="method.layers: layer 9 out of range for a 4-layer model"):
        build_method(LoraConfig(layers=(1, 9)), info)
    with pytest.raises(ConfigError, match="this model has no 'query' projection"):
        build_method(LoraConfig(), BackboneInfo(num_layers=4, hidden_size=8, max_positions=64, causal=False))


def lora_run(model: str, data: str, directory: Path, **method: object) -> Path:
    cfg = ExperimentConfig.from_dict(
        {
            "model": model,
            "data": {"task": "sst2", "data_dir": data, "max_length": 16},
            "method": {"name": "lora", "layers": [1, 3], "targets": "all", "rank": 3, **method},
            "train": {"steps": 3, "batch_size": 8, "eval_every": 3, "device": "cpu", "lr": 0.05},
        }
    )
    train_to_directory(cfg, directory)
    return directory


def test_merged_export_is_a_transformers_model_with_our_logits(
    bert_with_pooler: str, tiny_sst_dir: str, tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from autoprompt_search import load

    run = lora_run(bert_with_pooler, tiny_sst_dir, tmp_path / "run")
    write_merged_model(merged_model(run), run, tmp_path / "merged")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    enc = AutoTokenizer.from_pretrained(tmp_path / "merged")(
        ["good fine great", "bad awful poor dull"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        theirs = plain(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
        ours = load(run, device="cpu").model(Batch(enc.input_ids, enc.attention_mask.bool()))
        untrained = AutoModelForSequenceClassification.from_pretrained(bert_with_pooler, num_labels=2).bert
    assert not torch.allclose(plain.bert.encoder.layer[1].attention.self.query.weight,
                              untrained.encoder.layer[1].attention.self.query.weight)  # fmt: skip
    assert plain.config.id2label == {0: "negative", 1: "positive"}
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)


def test_merged_export_refuses_what_it_cannot_hold(tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path) -> None:
    run = lora_run(tiny_model_dir, tiny_sst_dir, tmp_path / "run")
    with pytest.raises(ConfigError, match="checkpoint has no pooler"):
        merged_model(run)
    cfg = ExperimentConfig.from_dict({"model": tiny_model_dir, "data": {"task": "sst2", "data_dir": tiny_sst_dir},
                                      "method": {"name": "deep", "layers": [1], "length": 2},
                                      "train": {"steps": 2, "batch_size": 8, "eval_every": 2, "device": "cpu"}})  # fmt: skip
    train_to_directory(cfg, tmp_path / "deep")
    with pytest.raises(ConfigError, match="only a LoRA run folds into the model's weights, this run is deep"):
        merged_model(tmp_path / "deep")


def test_train_and_predict_lora_from_the_command_line(tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path) -> None:
    from test_cli import app, runner, train_args

    out = str(tmp_path / "run")
    res = runner.invoke(app, train_args(tiny_model_dir, tiny_sst_dir, out, "--method", "lora", "--layers", "1,3",
                                        "--targets", "query,value", "--rank", "4", "--alpha", "8"))  # fmt: skip
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["config"]["method"] == {
        "name": "lora", "layers": [1, 3], "targets": "query,value", "rank": 4, "alpha": 8.0, "dropout": 0.1,
    }  # fmt: skip
    res = runner.invoke(app, ["predict", out, "--split", "test", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == saved["metrics"]["test"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rank", "0"], "method.rank: must be a positive integer, got 0"),
        (["--targets", "query,gate"], "method.targets: 'gate' unknown; use any of query, key, value"),
        (["--layers", "1,7"], "method.layers: layer 7 out of range for a 4-layer model; use 0..3"),
    ],
)
def test_bad_lora_options_exit_2_in_one_line(
    extra: list[str], message: str, tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path
) -> None:
    from test_cli import app, runner, train_args

    res = runner.invoke(app, train_args(tiny_model_dir, tiny_sst_dir, str(tmp_path / "r"), "--method", "lora", *extra))
    assert res.exit_code == 2, res.output
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.ray
def test_a_fused_study_over_prompts_and_lora(
    local_ray: None, tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path
) -> None:
    """LoRA is a method the search draws beside kv prefixes; members of either kind train in fused
    groups, each trial's row counts its own parameters, and the best exports and predicts its score."""
    from conftest import tiny_experiment

    from autoprompt_search.storage.checkpoint import predict_run
    from autoprompt_search.study.export import export_study
    from autoprompt_search.study.options import StudyOptions
    from autoprompt_search.study.records import read_trials
    from autoprompt_search.study.report import write_report
    from autoprompt_search.study.runner import run_study
    from autoprompt_search.study.space import experiment_for
    from autoprompt_search.training.workspace import count_trainable

    space = {
        "methods": {
            "lora": {"layers": {"type": "layer_set", "depth": [0.0, 1.0], "max_layers": 3},
                     "rank": {"type": "categorical", "choices": [2, 4]}, "targets": {"type": "categorical", "choices": ["query,value", "all"]}},
            "deep": {"form": "kv", "layers": [0, 1, 2, 3], "length": 3},
        },
        "train": {"lr": 0.05},
    }  # fmt: skip
    # Tried first: one LoRA and one kv configuration, so the first group holds both kinds.
    first = [{"method": {"name": "lora", "layers": [0, 2], "rank": 4, "targets": "all"}},
             {"method": {"name": "deep", "form": "kv", "layers": [0, 1, 2, 3], "length": 3}}]  # fmt: skip
    opts = StudyOptions(name="s", space=space, experiment=tiny_experiment(tiny_model_dir, tiny_sst_dir),
                        num_samples=4, max_concurrent=1, scheduler="fifo", finalists=0, fuse=2, sampler="random",
                        search_seed=3, enqueue=first)  # fmt: skip
    run_study(opts, tmp_path)
    rows = read_trials(tmp_path / "s")
    configs = [json.loads(r["config"]) for r in rows]
    assert len(rows) == 4 and configs[0]["method"]["name"] == "lora" and configs[1]["method"]["name"] == "deep"
    assert rows[0]["group_id"] == rows[1]["group_id"]  # fused: one LoRA and one kv member
    assert all(r["status"] in ("TERMINATED", "COLLAPSED") for r in rows)
    info = backbone_info(tiny_model_dir)  # what the driver counts with
    for row, config in zip(rows, configs, strict=True):
        cfg = experiment_for(opts.experiment, config)
        assert row["trainable_params"] == count_trainable(cfg, info, 2)
    (exported,) = export_study(tmp_path / "s", top=1)
    best = max((r for r in rows if r["dev_score"] is not None), key=lambda r: (r["dev_score"], -r["number"]))
    metrics, _ = predict_run(exported, "dev", device="cpu")
    assert metrics["score"] == pytest.approx(best["dev_score"], abs=1e-6)
    page = write_report(tmp_path / "s")  # the report's method and layer views take LoRA trials
    assert "lora" in Path(page).read_text()


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_kv_prefixes_and_lora_equal_the_prefixes_over_the_merged_model(family: str) -> None:
    """kv_lora = its kv prefixes run over a model whose weights have its LoRA folded in."""
    both = lora_model(family, KvLoraConfig(prefix_layers=(2, 3), length=3, layers=(0, 1), targets="all")).eval()
    prefixes = make(family, DeepConfig(layers=(2, 3), length=3, form="kv")).eval()
    prefixes.method.load_state_dict(both.method.prefixes.state_dict())
    prefixes.head.load_state_dict(both.head.state_dict())
    both.method.updates.merge_into(prefixes.backbone.blocks)
    batch = full_batch(b=3, t=6)
    batch.text_mask[2, 4:] = False
    with torch.no_grad():
        # Llama: rotary angles at positions shifted from block 2 alone, unshifted in both: equal
        # attention up to float rounding (~3e-5)
        torch.testing.assert_close(both(batch), prefixes(batch), atol=1e-4, rtol=1e-4)
    assert both.first_layer == 0


def test_kv_lora_options_are_checked_by_their_part() -> None:
    with pytest.raises(ConfigError, match="method.rank: must be a positive integer"):
        KvLoraConfig(rank=0)
    with pytest.raises(ConfigError, match="method.length: must be > 0"):
        KvLoraConfig(length=0)
    info = BackboneInfo.of(backbone_from_config(tiny_configs()["bert"]))
    with pytest.raises(ConfigError, match="method.layers: layer 4 out of range for a 4-layer model"):
        build_method(KvLoraConfig(prefix_layers=(1, 4)), info)
