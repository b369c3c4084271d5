"""Save and reload: safetensors + JSON, logits and metrics reproduced exactly."""

from __future__ import annotations

import json

import pytest
import torch
from test_training import experiment

from autoprompt_search.methods import DeepConfig, LateConfig
from autoprompt_search.storage.checkpoint import load_run, predict_run, save_run
from autoprompt_search.training.loop import train_experiment
from autoprompt_search.training.workspace import prepare_workspace


@pytest.mark.parametrize(
    "method",
    [
        DeepConfig(layers=(0, 2), length=3, position="split", split_at=1, reparam=8),
        LateConfig(layer=1, length=2, generator="appg", bottleneck=8),
    ],
    ids=["deep", "late"],
)
def test_round_trip_reproduces_logits_and_metrics(tiny_model_dir: str, tiny_sst_dir: str, tmp_path, method) -> None:
    cfg = experiment(tiny_model_dir, tiny_sst_dir, method, steps=6, eval_every=3)
    ws = prepare_workspace(cfg)
    result = train_experiment(cfg, ws)
    save_run(result, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "prompt.safetensors"]
    model, cfg2, ws2 = load_run(tmp_path / "run", device="cpu")
    assert cfg2.to_dict() | {"train": None} == cfg.to_dict() | {"train": None}
    batch = ws.splits["dev"].batch(torch.arange(10))
    result.model.eval()
    assert torch.equal(model(batch), result.model(batch))
    for split in ("dev", "test"):
        metrics, _ = predict_run(tmp_path / "run", split, ws=ws2, device="cpu")
        saved = json.loads((tmp_path / "run" / "config.json").read_text())["metrics"][split]
        assert {k: v for k, v in metrics.items()} == {k: v for k, v in saved.items() if k != "step"}


def test_weights_that_do_not_match_the_config_are_refused(tiny_model_dir: str, tiny_sst_dir: str, tmp_path) -> None:
    cfg = experiment(tiny_model_dir, tiny_sst_dir, DeepConfig(layers=(0,), length=3), steps=2)
    ws = prepare_workspace(cfg)
    save_run(train_experiment(cfg, ws), tmp_path / "run")
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    record["config"]["method"]["layers"] = [0, 1]
    (tmp_path / "run" / "config.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"^run: weights do not match the config"):
        load_run(tmp_path / "run", ws=ws, device="cpu")
    (tmp_path / "run" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"is not valid JSON"):
        load_run(tmp_path / "run", ws=ws, device="cpu")


def test_a_corrupt_training_state_is_one_line_config_error(tmp_path) -> None:
    """What a resumed trial reads back (training_state.json / .safetensors) fails with the file and the fix."""
    from autoprompt_search.errors import ConfigError
    from autoprompt_search.storage.checkpoint import load_training_state, save_training_state, training_step
    from autoprompt_search.training.loop import TrainingState

    save_training_state(TrainingState({"param.w": torch.ones(3)}, {"step": 7}), tmp_path)
    assert training_step(tmp_path) == 7 and load_training_state(tmp_path).meta["step"] == 7  # type: ignore[union-attr]
    meta = tmp_path / "training_state.json"
    meta.write_text(meta.read_text()[:5])
    assert training_step(tmp_path) == -1  # never picked as the latest: a newer readable one is
    with pytest.raises(ConfigError, match="training_state.json is not valid JSON; the checkpoint is corrupt"):
        load_training_state(tmp_path)
    meta.write_text(json.dumps({"step": 7}))
    tensors = tmp_path / "training_state.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:20])
    with pytest.raises(ConfigError, match="training_state.safetensors is not a readable safetensors file"):
        load_training_state(tmp_path)
