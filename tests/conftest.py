"""Shared fixtures: tiny random Hugging Face models of every family, a tiny real-format dataset, the
tiny experiment studies train, a local Ray per test module, free loopback ports."""

from __future__ import annotations

import os
import random
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertModel,
    BertTokenizerFast,
    GPT2Config,
    LlamaConfig,
    MPNetConfig,
    Qwen2Config,
    RobertaConfig,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64)
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny_configs() -> dict[str, object]:
    return {
        "bert": BertConfig(vocab_size=120, **TINY, **NO_DROPOUT),
        "roberta": RobertaConfig(vocab_size=120, **TINY, **NO_DROPOUT),
        "mpnet": MPNetConfig(vocab_size=120, **TINY, **NO_DROPOUT),
        "gpt2": GPT2Config(
            vocab_size=120,
            n_embd=32,
            n_layer=4,
            n_head=4,
            n_positions=128,
            bos_token_id=0,
            eos_token_id=0,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        ),
        "llama": LlamaConfig(vocab_size=120, num_key_value_heads=2, **TINY),
        "qwen2": Qwen2Config(vocab_size=120, num_key_value_heads=2, **TINY),
    }


FAMILIES = list(tiny_configs())
ENCODERS = ["bert", "roberta", "mpnet"]
DECODERS = ["gpt2", "llama", "qwen2"]

WORDS = [
    "good",
    "great",
    "fine",
    "fun",
    "nice",
    "lovely",
    "bad",
    "awful",
    "poor",
    "dull",
    "boring",
    "sad",
    "movie",
    "film",
    "plot",
    "actor",
    "story",
    "the",
    "a",
    "an",
    "is",
    "was",
    "it",
    "this",
    "that",
    "and",
    "but",
    "very",
    "not",
    "really",
    "quite",
    "so",
    "what",
    "who",
    "where",
    "when",
    "how",
    "why",
]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPROMPT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A saved tiny random BERT (with an MLM head) and a word-level tokenizer, loadable by path."""
    root = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    torch.manual_seed(0)
    # A larger init than BERT's 0.02 so a random model's features depend on the words enough to learn from.
    config = BertConfig(vocab_size=len(vocab), max_position_embeddings=128, initializer_range=0.3, **TINY, **NO_DROPOUT)
    model = BertForMaskedLM(config)
    model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return str(root)


def _sentence(rng: random.Random, positive: bool) -> str:
    mood = (
        ["good", "great", "fine", "fun", "nice", "lovely"]
        if positive
        else ["bad", "awful", "poor", "dull", "boring", "sad"]
    )
    filler = ["the", "movie", "film", "plot", "was", "is", "very", "really", "so", "this", "story", "actor"]
    words = [rng.choice(filler) for _ in range(rng.randint(1, 4))]
    words.insert(rng.randint(0, len(words)), rng.choice(mood))
    return " ".join(words)


@pytest.fixture(scope="session")
def bert_with_pooler(tiny_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny BERT saved as a BertModel with a (random) pooler, as BertForSequenceClassification
    uses: the model a run needs to be exported as a peft adapter."""
    root = tmp_path_factory.mktemp("tiny-bert-pooler")
    torch.manual_seed(1)
    BertModel(BertConfig.from_pretrained(tiny_model_dir)).save_pretrained(root)
    BertTokenizerFast.from_pretrained(tiny_model_dir).save_pretrained(root)
    return str(root)


def peft_and_our_logits(run: str | Path, model: str) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Load a run written as a peft adapter with `PeftModel.from_pretrained` on `model` and with our
    loader; return peft's model and both sides' logits on two sentences."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from autoprompt_search import load
    from autoprompt_search.engine.batch import Batch

    enc = AutoTokenizer.from_pretrained(model)(
        ["good fine great", "bad awful poor terrible dull"], padding=True, return_tensors="pt"
    )
    base = AutoModelForSequenceClassification.from_pretrained(model, num_labels=2)
    theirs = PeftModel.from_pretrained(base, str(run)).eval()
    with torch.no_grad():
        expected = theirs(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
        ours = load(run, device="cpu").model(Batch(enc.input_ids, enc.attention_mask.bool()))
    return theirs, ours, expected


@pytest.fixture(scope="session")
def tiny_sst_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """SST-2-format TSV files (sentence, label) that a tiny model can learn."""
    root = tmp_path_factory.mktemp("tiny-sst")
    rng = random.Random(0)
    for split, n in (("train", 160), ("dev", 48), ("test", 48)):
        rows = ["sentence\tlabel"]
        for i in range(n):
            label = i % 2
            rows.append(f"{_sentence(rng, bool(label))}\t{label}")
        (root / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return str(root)


def shared_glue(task: str) -> str:
    path = SHARED_DATA / "glue" / task
    if not path.is_dir():
        pytest.skip(f"{path} absent (../shared/data is only on the team's machines)")
    return str(path)


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


NEEDS = ("ray", "browser", "packaged_model")  # what a test needs; each such test is also slow


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(name) for name in NEEDS) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


class InterruptAfter:
    """Ctrl-C the study once `n` trials have finished (once per marker file: resumed runs go on)."""

    def __init__(self, n: int, marker: str) -> None:
        from ray.tune import Callback

        self.__class__ = type("InterruptAfterCallback", (InterruptAfter, Callback), {})
        self.n, self.marker, self.done = n, marker, 0

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1
        if self.done >= self.n and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGINT)


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tiny_experiment(model: str, data: str, steps: int = 6) -> dict[str, Any]:
    """The base experiment of the tests' studies: deep prompts on the tiny SST-2, a few steps."""
    return {
        "model": model,
        "data": {"task": "sst2", "source": "files", "data_dir": data, "max_length": 32},
        "method": {"name": "deep"},
        "train": {"steps": steps, "eval_every": 2, "batch_size": 8, "lr": 0.05},
    }


@pytest.fixture(scope="module")
def local_ray():  # type: ignore[no-untyped-def]
    """A local Ray (2 CPUs, 1 logical GPU that the Train workers read from LOGICAL_GPUS_ENV) shared
    by one test module's studies."""
    import ray

    from autoprompt_search.study.cluster import start_local
    from autoprompt_search.study.trial import LOGICAL_GPUS_ENV

    os.environ[LOGICAL_GPUS_ENV] = "1"
    start_local(num_cpus=2, num_gpus=1)
    yield
    ray.shutdown()
    os.environ.pop(LOGICAL_GPUS_ENV, None)
