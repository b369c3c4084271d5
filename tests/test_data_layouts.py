"""Each registered task reads its own official distribution files by name, with no --column mapping.

The rows below copy the layouts of GLUE's TSVs (as its download script writes them) and
SuperGLUE's JSON lines: headers, column order, label spellings, a byte-order mark, CoLA's
headerless train/dev files, MNLI's dev_matched name, GLUE's unlabelled test files and
Microsoft's own MRPC release.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoprompt_search.data.sources import DataConfig, load_task_data, read_rows

T = "\t"
LAYOUTS: dict[str, dict[str, str]] = {
    "sst2": {
        "train.tsv": f"sentence{T}label\nhide new secretions {T}0\na charming journey {T}1\n",
        "dev.tsv": f"sentence{T}label\nunflinchingly bleak {T}0\n",
        "test.tsv": f"index{T}sentence\n0{T}uneasy mishmash of styles\n",  # GLUE's test: no labels
    },
    "cola": {  # train/dev have no header: source, label, original mark, sentence
        "train.tsv": f"gj04{T}1{T}{T}Our friends won't buy this analysis.\ngj04{T}0{T}*{T}They drank the pub.\n",
        "dev.tsv": f"gj04{T}1{T}{T}The sailors rode the breeze clear of the rocks.\n",
    },
    "mrpc": {  # Microsoft's files start with a byte-order mark, kept by GLUE's script
        "train.tsv": f"\ufeffQuality{T}#1 ID{T}#2 ID{T}#1 String{T}#2 String\n"
        f"1{T}702876{T}702977{T}Amrozi accused his brother .{T}Referring to him , Amrozi accused his brother .\n"
        f"0{T}2108705{T}2108831{T}Yucaipa owned Dominick 's .{T}Yucaipa bought Dominick 's in 1995 .\n",
        "dev.tsv": f"\ufeffQuality{T}#1 ID{T}#2 ID{T}#1 String{T}#2 String\n1{T}1{T}2{T}He said so .{T}So he said .\n",
    },
    "rte": {
        "train.tsv": f"index{T}sentence1{T}sentence2{T}label\n0{T}No weapons found.{T}Weapons found.{T}not_entailment\n"
        f"1{T}A man eats.{T}Someone eats.{T}entailment\n",
        "dev.tsv": f"index{T}sentence1{T}sentence2{T}label\n0{T}It rains.{T}It is wet.{T}entailment\n",
    },
    "qnli": {
        "train.tsv": f"index{T}question{T}sentence{T}label\n0{T}When?{T}In 1990.{T}entailment\n"
        f"1{T}Who?{T}The sky is blue.{T}not_entailment\n",
        "dev.tsv": f"index{T}question{T}sentence{T}label\n0{T}Where?{T}In Paris.{T}entailment\n",
    },
    "mnli": {
        "train.tsv": f"index{T}promptID{T}pairID{T}genre{T}sentence1_binary_parse{T}sentence2_binary_parse{T}"
        f"sentence1_parse{T}sentence2_parse{T}sentence1{T}sentence2{T}label1{T}gold_label\n"
        f"0{T}31193{T}31193n{T}government{T}( a ){T}( b ){T}(ROOT a){T}(ROOT b){T}Cream skimming.{T}"
        f"Product and geography.{T}neutral{T}neutral\n"
        f"1{T}101457{T}101457e{T}telephone{T}( c ){T}( d ){T}(ROOT c){T}(ROOT d){T}You know it.{T}"
        f"You lose it.{T}contradiction{T}contradiction\n",
        "dev_matched.tsv": f"index{T}promptID{T}pairID{T}genre{T}sentence1_binary_parse{T}sentence2_binary_parse{T}"
        f"sentence1_parse{T}sentence2_parse{T}sentence1{T}sentence2{T}label1{T}label2{T}label3{T}label4{T}label5{T}"
        f"gold_label\n0{T}63735{T}63735n{T}slate{T}( e ){T}( f ){T}(ROOT e){T}(ROOT f){T}The new rights.{T}"
        f"Everyone likes them.{T}neutral{T}entailment{T}neutral{T}neutral{T}neutral{T}neutral\n",
    },
    "qqp": {
        "train.tsv": f"id{T}qid1{T}qid2{T}question1{T}question2{T}is_duplicate\n133273{T}213221{T}213222{T}"
        f"How is the life?{T}How is life?{T}1\n402555{T}536040{T}536041{T}Why?{T}When?{T}0\n",
        "dev.tsv": f"id{T}qid1{T}qid2{T}question1{T}question2{T}is_duplicate\n1{T}2{T}3{T}Is it?{T}It is?{T}1\n",
    },
}
SUPERGLUE: dict[str, list[dict]] = {
    "superglue-boolq": [{"question": "is it true", "title": "T", "passage": "It is.", "idx": 0, "label": True},
                        {"question": "is it false", "title": "F", "passage": "No.", "idx": 1, "label": False}],
    "superglue-cb": [{"premise": "A b.", "hypothesis": "C d.", "label": "contradiction", "idx": 0},
                     {"premise": "E f.", "hypothesis": "E.", "label": "entailment", "idx": 1}],
    "superglue-rte": [{"premise": "A b.", "hypothesis": "B.", "label": "not_entailment", "idx": 0}],
    "superglue-wic": [{"word": "place", "sentence1": "Do you know the place?", "sentence2": "Take a place.",
                       "idx": 0, "label": False, "start1": 16, "start2": 7, "end1": 21, "end2": 12}],
}  # fmt: skip
EXPECTED = {  # task -> (first training text(s), training labels as class names)
    "sst2": (("hide new secretions ",), ["negative", "positive"]),
    "cola": (("Our friends won't buy this analysis.",), ["acceptable", "unacceptable"]),
    "mrpc": (("Amrozi accused his brother .", "Referring to him , Amrozi accused his brother ."),
             ["equivalent", "not_equivalent"]),
    "rte": (("No weapons found.", "Weapons found."), ["not_entailment", "entailment"]),
    "qnli": (("When?", "In 1990."), ["entailment", "not_entailment"]),
    "mnli": (("Cream skimming.", "Product and geography."), ["neutral", "contradiction"]),
    "qqp": (("How is the life?", "How is life?"), ["duplicate", "not_duplicate"]),
    "superglue-boolq": (("is it true", "It is."), ["True", "False"]),
    "superglue-cb": (("A b.", "C d."), ["contradiction", "entailment"]),
    "superglue-rte": (("A b.", "B."), ["not_entailment"]),
    "superglue-wic": (("place: Do you know the place?", "Take a place."), ["False"]),
}  # fmt: skip


def write_layout(task: str, root: Path) -> Path:
    root.mkdir()
    if task in LAYOUTS:
        for name, text in LAYOUTS[task].items():
            (root / name).write_text(text, encoding="utf-8")
    else:
        lines = "\n".join(json.dumps(row) for row in SUPERGLUE[task]) + "\n"
        (root / "train.jsonl").write_text(lines, encoding="utf-8")
        (root / "val.jsonl").write_text(lines, encoding="utf-8")
    return root


@pytest.mark.parametrize("task", list(EXPECTED))
def test_official_layout_loads_without_column_mapping(task: str, tmp_path: Path) -> None:
    data = load_task_data(DataConfig(task=task, data_dir=str(write_layout(task, tmp_path / task))))
    texts, labels = EXPECTED[task]
    train = data.splits["train"]
    assert (train.text_a[0], *(train.text_b[:1] if train.text_b else [])) == texts
    assert [data.task.labels[i] for i in train.labels] == labels
    assert data.origin["dev"].endswith(("/dev.tsv", "/dev_matched.tsv", "/val.jsonl")) and len(data.splits["dev"]) >= 1
    assert "test" not in data.splits  # sst2's GLUE test.tsv has no labels: skipped, not an error


def test_a_byte_order_mark_never_reaches_a_column_name(tmp_path: Path) -> None:
    for suffix, text in [(".tsv", f"\ufeffsentence{T}label\nok{T}1\n"), (".csv", "\ufeffsentence,label\nok,1\n"),
                         (".jsonl", '\ufeff{"sentence": "ok", "label": 1}\n')]:  # fmt: skip
        path = tmp_path / f"train{suffix}"
        path.write_text(text, encoding="utf-8")
        assert read_rows(str(path)) == [{"sentence": "ok", "label": "1" if suffix != ".jsonl" else 1}]


def test_microsofts_own_mrpc_files_load_by_name(tmp_path: Path) -> None:
    header = f"\ufeffQuality{T}#1 ID{T}#2 ID{T}#1 String{T}#2 String\n"
    pairs = "".join(f'{i % 2}{T}{i}{T}{i + 1}{T}He said "so" {i} .{T}So he said {i} .\n' for i in range(20))
    (tmp_path / "msr_paraphrase_train.txt").write_text(header + pairs, encoding="utf-8")
    (tmp_path / "msr_paraphrase_test.txt").write_text(header + f"1{T}1{T}2{T}It is .{T}It is so .\n", encoding="utf-8")
    data = load_task_data(DataConfig(task="mrpc", data_dir=str(tmp_path)))
    assert len(data.splits["train"]) + len(data.splits["dev"]) == 20 and len(data.splits["test"]) == 1
    assert data.splits["test"].text_a == ["It is ."] and data.splits["test"].labels == [1]
    assert '"so"' in data.splits["train"].text_a[0] + data.splits["dev"].text_a[0]  # quotes kept, as GLUE's TSVs


def test_a_mapped_column_still_wins_over_the_official_names(tmp_path: Path) -> None:
    root = write_layout("mrpc", tmp_path / "mrpc")
    data = load_task_data(DataConfig(task="mrpc", data_dir=str(root), columns={"sentence1": "#2 String"}))
    assert data.splits["train"].text_a[0] == "Referring to him , Amrozi accused his brother ."
