"""The Python API: train, load(...).predict(texts), and a study driven from Python."""

from __future__ import annotations

import pytest

import autoprompt_search
from autoprompt_search.data import DataConfig, load_task_data
from autoprompt_search.errors import ConfigError
from autoprompt_search.storage.checkpoint import predict_run
from autoprompt_search.study.export import export_study


def test_train_then_load_predicts_what_the_run_predicts(tiny_model_dir: str, tiny_sst_dir: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "run"
    result = autoprompt_search.train(
        output=out, model=tiny_model_dir, task="sst2", data_dir=tiny_sst_dir, max_length=32, steps=4, eval_every=2,
        lr=0.3, method="deep", layers="0", length=2, device="cpu",
    )  # fmt: skip
    assert (out / "prompt.safetensors").is_file() and result.metrics["trainable_params"] > 0
    _, preds = predict_run(out, "dev", device="cpu")
    dev = load_task_data(DataConfig(task="sst2", data_dir=tiny_sst_dir)).splits["dev"]
    model = autoprompt_search.load(out, device="cpu")
    labels = model.predict(dev.text_a)
    assert labels == [("negative", "positive")[int(i)] for i in preds]
    # A string is one text (it was labelled character by character); nothing to label is no labels.
    assert model.predict(dev.text_a[0]) == labels[:1] and model.predict([]) == []
    (probs,) = model.probabilities(dev.text_a[0])
    assert set(probs) == {"negative", "positive"} and abs(sum(probs.values()) - 1) < 1e-6
    with pytest.raises(ConfigError, match="learning_rate: not an experiment option"):
        autoprompt_search.train(output=tmp_path / "x", learning_rate=0.1)


@pytest.mark.ray
def test_a_study_from_python(tiny_model_dir: str, tiny_sst_dir: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    space = tmp_path / "space.yaml"
    space.write_text(
        "methods:\n  deep: {layers: [0], length: {type: categorical, choices: [2, 3]}}\ntrain: {lr: 0.3}\n"
    )
    result = autoprompt_search.search(
        str(space), name="py", results_dir=tmp_path, num_samples=2, max_concurrent=2, finalists=1, seeds=2,
        scheduler="fifo", num_cpus=2, model=tiny_model_dir, task="sst2", data_dir=tiny_sst_dir, max_length=32,
        steps=6, eval_every=3, batch_size=8,
    )  # fmt: skip
    table = result.table
    assert len(table) == 4 and table["finalist_of"].notna().sum() == 2
    assert result.study_dir == (tmp_path / "py").resolve() and (result.study_dir / "trials.parquet").is_file()
    if result.best is not None:  # tiny trials may all collapse; then there is no best to name
        assert result.best_config is not None and result.best_config["method"]["name"] == "deep"
        assert "seed" not in result.best_config["train"]  # the searched configuration, not one seed's run
        # Input prompts read on [CLS]: peft's prompt tuning cannot hold them (its classifier reads a
        # virtual token), so the export refuses before it writes anything.
        with pytest.raises(ConfigError, match="peft's prompt tuning puts the prompt before"):
            export_study(result.study_dir, top=1, form="peft", output=tmp_path / "peft")
        assert not (tmp_path / "peft").exists()
        (exported,) = export_study(result.study_dir, top=1)  # an exported trial loads like a run
        _, preds = predict_run(exported, "dev", device="cpu")
        dev = load_task_data(DataConfig(task="sst2", data_dir=tiny_sst_dir)).splits["dev"]
        labels = autoprompt_search.load(exported, device="cpu").predict(dev.text_a)
        assert labels == [("negative", "positive")[int(i)] for i in preds]
    again = autoprompt_search.resume(result.study_dir)  # a finished study: nothing reruns, the same result
    assert again.rows == result.rows and again.best == result.best
