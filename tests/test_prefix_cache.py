"""Frozen-prefix cache: same training with and without it, shared files, keys, eviction, off switch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import FAMILIES, tiny_configs
from safetensors import safe_open
from test_training import experiment

from autoprompt_search.backbones import backbone_from_config
from autoprompt_search.engine.prefix_cache import PrefixStore, cache_root
from autoprompt_search.methods import DeepConfig, DpConfig, LateConfig, ProbeConfig
from autoprompt_search.methods.lora import LoraConfig
from autoprompt_search.training.loop import train_experiment
from autoprompt_search.training.workspace import build_model, prefix_feeder, prepare_workspace


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPROMPT_CACHE", str(tmp_path / "cache"))  # no rows filled by other tests


def _same_training(cfg_on: object, cfg_off: object, ws: object) -> tuple[dict, dict]:
    on = train_experiment(cfg_on, ws)  # type: ignore[arg-type]
    off = train_experiment(cfg_off, ws)  # type: ignore[arg-type]
    assert on.best_state.keys() == off.best_state.keys()
    for name, value in on.best_state.items():
        torch.testing.assert_close(value, off.best_state[name], rtol=1e-4, atol=1e-5)
    assert on.metrics["dev"]["score"] == off.metrics["dev"]["score"]
    return on.metrics, off.metrics


@pytest.mark.parametrize(
    "method",
    [
        LateConfig(layer=2, length=3, bottleneck=8),
        LateConfig(layer=1, length=2, bottleneck=8, generator="appg"),
        DeepConfig(layers=(1, 3), length=2, position="split", split_at=1),
        ProbeConfig(),
        DpConfig(length=3, pool=2),
        LoraConfig(layers=(2, 3), targets="all", rank=2, dropout=0.1),
    ],
    ids=["lpt-2", "lpt-1-appg", "deep-1-3-split", "probe", "dp-summary", "lora-2-3"],
)
def test_cached_training_equals_uncached(tiny_model_dir: str, tiny_sst_dir: str, method: object) -> None:
    cfg_on = experiment(tiny_model_dir, tiny_sst_dir, method, steps=8, eval_every=4, lr=3e-2)
    cfg_off = experiment(tiny_model_dir, tiny_sst_dir, method, steps=8, eval_every=4, lr=3e-2, prefix_cache=False)
    ws = prepare_workspace(cfg_on)
    on, off = _same_training(cfg_on, cfg_off, ws)
    assert off["prefix_cache"] is None
    model = build_model(cfg_on, ws)
    expected = model.backbone.num_layers if isinstance(method, DpConfig) else model.first_layer
    assert on["prefix_cache"]["layer"] == expected
    assert on["prefix_cache"]["misses"] > 0
    again = train_experiment(cfg_on, ws).metrics["prefix_cache"]
    assert again["misses"] == 0 and again["hits"] == on["prefix_cache"]["hits"] + on["prefix_cache"]["misses"]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_gets_the_same_states_from_the_cache(tiny_model_dir: str, tiny_sst_dir: str, family: str) -> None:
    cfg = experiment(tiny_model_dir, tiny_sst_dir, LateConfig(layer=2, length=2, bottleneck=8))
    backbone = backbone_from_config(tiny_configs()[family], seed=3)
    ws = prepare_workspace(cfg, backbone=backbone)
    model = build_model(cfg, ws).eval()
    feeder = prefix_feeder(cfg, ws, model, torch.device("cpu"))
    assert feeder is not None
    rows = torch.tensor([5, 0, 17, 3])
    feeder.batch("dev", rows[:2])  # rows 5 and 0 missing: their block (rows 0-31) is filled
    cached = feeder.batch("dev", rows)
    plain = ws.splits["dev"].batch(rows)
    assert cached.prefix is not None and cached.prefix_layer == 2
    torch.testing.assert_close(model(cached), model(plain), rtol=1e-4, atol=1e-5)
    assert feeder.hits == 4 and feeder.misses == 2


def test_cache_file_is_safetensors_shared_between_openers_and_keyed_by_lower_weights(
    tiny_model_dir: str, tiny_sst_dir: str
) -> None:
    cfg = experiment(tiny_model_dir, tiny_sst_dir, LateConfig(layer=2, length=2, bottleneck=8))
    ws = prepare_workspace(cfg)
    model = build_model(cfg, ws)
    feeder = prefix_feeder(cfg, ws, model, torch.device("cpu"))
    feeder.batch("train", torch.tensor([3, 40]))  # fills their blocks: rows 0-31 and 32-63
    store = feeder.store("train")
    with safe_open(str(store.path), framework="pt") as f:  # a valid safetensors file at all times
        assert f.get_tensor("filled")[:66].tolist() == [1] * 64 + [0, 0]
        n = int(ws.splits["train"].lengths[:64].sum())
        torch.testing.assert_close(f.get_tensor("hidden")[:n], store.hidden[:n])
    other = PrefixStore(store.path, ws.splits["train"].offsets, model.backbone.hidden_size, torch.float32)
    assert other.missing(torch.arange(66)).tolist() == [64, 65]  # a second opener sees the rows
    # Weights above the cached layer do not change the key; weights below it do.
    top = list(model.backbone.blocks)[3]
    with torch.no_grad():
        next(top.parameters()).add_(1.0)
    model.backbone.__dict__.pop("_prefix_digests")
    assert prefix_feeder(cfg, ws, model, torch.device("cpu")).store("train").path == store.path
    with torch.no_grad():
        next(list(model.backbone.blocks)[1].parameters()).add_(1.0)
    model.backbone.__dict__.pop("_prefix_digests")
    assert prefix_feeder(cfg, ws, model, torch.device("cpu")).store("train").path != store.path


def test_size_limit_evicts_old_files_and_skips_what_cannot_fit(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    root = cache_root()
    cfg = experiment(tiny_model_dir, tiny_sst_dir, LateConfig(layer=1, length=2, bottleneck=8))
    ws = prepare_workspace(cfg)
    feeder = prefix_feeder(cfg, ws, build_model(cfg, ws), torch.device("cpu"))
    feeder.batch("train", torch.arange(len(ws.splits["train"])))  # every row filled: the file takes its full size
    old = feeder.store("train").path
    size = old.stat().st_size
    for p in root.glob("*.safetensors"):  # only `old` is left in the directory
        if p != old:
            p.unlink()
    # Room for one train-split file: opening layer 2's evicts layer 1's.
    cfg2 = experiment(tiny_model_dir, tiny_sst_dir, LateConfig(layer=2, length=2, bottleneck=8))
    cfg2.train.prefix_cache_gb = 1.5 * size / 2**30
    feeder2 = prefix_feeder(cfg2, ws, build_model(cfg2, ws), torch.device("cpu"))
    assert feeder2.store("train") is not None and not old.exists()
    # A limit below one file: no cache, training still runs and matches.
    cfg3 = experiment(tiny_model_dir, tiny_sst_dir, LateConfig(layer=3, length=2, bottleneck=8))
    cfg3.train.prefix_cache_gb = 0.5 * size / 2**30
    feeder3 = prefix_feeder(cfg3, ws, build_model(cfg3, ws), torch.device("cpu"))
    assert feeder3.store("train") is None
    batch = feeder3.batch("train", torch.arange(4))
    assert batch.prefix is None and len(list(root.glob("*.safetensors"))) == 1


def test_switch_off_and_unprompted_input_write_nothing(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    before = set(Path(cache_root()).glob("*")) if cache_root().is_dir() else set()
    off = experiment(tiny_model_dir, tiny_sst_dir, LateConfig(layer=2, length=2, bottleneck=8), prefix_cache=False)
    assert train_experiment(off, prepare_workspace(off)).metrics["prefix_cache"] is None
    at_input = experiment(tiny_model_dir, tiny_sst_dir, DeepConfig(layers=(0, 2), length=2))
    assert train_experiment(at_input, prepare_workspace(at_input)).metrics["prefix_cache"] is None
    after = set(Path(cache_root()).glob("*")) if cache_root().is_dir() else set()
    assert after == before


def test_frozen_passes_and_cache_fills_never_carry_dropout(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    from conftest import TINY
    from transformers import BertConfig

    config = BertConfig(vocab_size=120, hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5, **TINY)
    cfg = experiment(tiny_model_dir, tiny_sst_dir, DpConfig(length=3, pool=2))
    ws = prepare_workspace(cfg, backbone=backbone_from_config(config, seed=2))
    model = build_model(cfg, ws).train()
    batch = ws.splits["train"].batch(torch.arange(6))
    torch.testing.assert_close(model._summary(batch), model._summary(batch))  # no dropout sample in it
    assert model.backbone.blocks[0].training  # ...and the training mode is back afterwards
    feeder = prefix_feeder(cfg, ws, model, torch.device("cpu"))
    assert feeder.layer == model.backbone.num_layers
    cached = feeder.batch("train", torch.arange(6)).prefix
    model.eval()
    torch.testing.assert_close(cached, model.text_states(batch, model.backbone.num_layers) * batch.text_mask[..., None])


def test_the_cache_holds_the_same_states_whichever_batch_filled_it(
    tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row's frozen states depend on the padding width of the batch that computes them (float
    rounding, at MiniLM's width ~1e-6): filled by whichever batch first needed them, the cache made a
    configuration train a different history in a study where another trial had filled it first."""
    from transformers import BertConfig

    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "dev"):  # one short sentence and one long: very different padding widths
        (data / f"{split}.tsv").write_text("sentence\tlabel\ngood film\t1\n" + "the plot was dull " * 12 + "\t0\n")
    cfg = experiment(tiny_model_dir, str(data), LateConfig(layer=2, length=2, bottleneck=8))
    cfg.data.max_length = 64
    wide = BertConfig(vocab_size=120, hidden_size=384, num_hidden_layers=3, num_attention_heads=6,
                      intermediate_size=1536, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    ws = prepare_workspace(cfg, backbone=backbone_from_config(wide, seed=0))
    model = build_model(cfg, ws).eval()
    short, long = 0, 1
    stored = []
    for first in ([short], [short, long]):  # the short row filled alone, then beside the longest one
        monkeypatch.setenv("AUTOPROMPT_CACHE", str(tmp_path / f"cache-{len(first)}"))
        feeder = prefix_feeder(cfg, ws, model, torch.device("cpu"))
        assert feeder is not None
        feeder.batch("dev", torch.tensor(first))
        stored.append(feeder.batch("dev", torch.tensor([short])).prefix)
    assert torch.equal(stored[0], stored[1])
