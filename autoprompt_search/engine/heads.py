"""Heads that turn the head token's final hidden state into class logits.

- `classifier`: a trainable Linear(d, C) on the first text token (encoders, after the
  pretrained pooler where the family has one) or the last real token (decoders); with pooling
  `mean` on the mean of the text tokens, with `first` on the first position of the sequence, an
  input prompt's first slot (peft prompt tuning's BertForSequenceClassification reads that one);
  optional dropout on its input (BertForSequenceClassification's is 0.1).
- `label_words`: the frozen LM head at the head token, read at one label word per class
  (encoders: the mask token appended to the input; decoders: the next-token prediction).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from autoprompt_search.backbones import Backbone
from autoprompt_search.errors import ConfigError, require
from autoprompt_search.methods.noise import SeededDropout

HEAD_KINDS = ("classifier", "label_words")
POOLINGS = ("token", "mean", "first")


@dataclass
class HeadConfig:
    kind: str = "classifier"  # classifier | label_words
    label_words: tuple[str, ...] = ()  # one word per class for label_words; empty = the task's defaults
    pooler: bool = True  # pass encoders' head token through their pretrained (frozen) pooler if any
    # classifier input: token (first text token; last real for decoders) | mean (of the text) |
    # first (the sequence's first position: an input prompt's first slot, as peft prompt tuning)
    pooling: str = "token"
    dropout: float = 0.0  # on the classifier's input in training (BertForSequenceClassification: 0.1)

    def __post_init__(self) -> None:
        require(self.kind in HEAD_KINDS, f"head.kind: {self.kind!r} unknown; use one of {', '.join(HEAD_KINDS)}")
        require(self.pooling in POOLINGS, f"head.pooling: {self.pooling!r} unknown; use token, mean or first")
        require(
            self.pooling == "token" or self.kind == "classifier",
            f"head.pooling: {self.pooling} pooling is for the classifier head; label_words reads one token",
        )
        require(0.0 <= self.dropout < 1.0, f"head.dropout: must be in [0, 1), got {self.dropout}")
        require(
            self.dropout == 0.0 or self.kind == "classifier",
            "head.dropout: the label_words head has no trainable input to drop; use dropout 0",
        )


class ClassifierHead(nn.Module):
    def __init__(
        self, backbone: Backbone, num_classes: int, pooler: bool, pooling: str = "token", dropout: float = 0.0
    ) -> None:
        super().__init__()
        # Mean pooling (how sentence-transformers models such as all-MiniLM were trained) skips the
        # pretrained pooler, which was trained on the first token.
        self.pooling = pooling
        self.pool = backbone.pool if pooler and pooling != "mean" else None
        self.dropout = SeededDropout(dropout)  # masks from a stream of its own: fused equals alone
        self.linear = nn.Linear(backbone.hidden_size, num_classes)

    def init_parameters(self, generator: torch.Generator) -> None:
        with torch.no_grad():
            self.linear.weight.normal_(0.0, 0.02, generator=generator)
            self.linear.bias.zero_()

    def forward(self, token: Tensor) -> Tensor:
        """token (B, d) -> logits (B, C)."""
        if self.pool is not None:
            token = self.pool(token)
        return self.linear(self.dropout(token.to(self.linear.weight.dtype)))


class LabelWordHead(nn.Module):
    """Frozen LM head read at one vocabulary id per class; no trainable parameters."""

    def __init__(self, backbone: Backbone, label_ids: list[int]) -> None:
        super().__init__()
        if backbone.lm_head is None:
            raise ConfigError("head.kind: label_words needs a backbone loaded with its LM head")
        self.lm_head = backbone.lm_head
        self.register_buffer("label_ids", torch.tensor(label_ids, dtype=torch.long), persistent=False)

    def init_parameters(self, generator: torch.Generator) -> None:
        return None

    def forward(self, token: Tensor) -> Tensor:
        logits = self.lm_head(token[:, None, :])[:, 0]  # (B, V)
        return logits[:, self.label_ids]  # (B, C)


def label_word_ids(tokenizer: object, words: tuple[str, ...]) -> list[int]:
    """One vocabulary id per label word; a word that splits into several tokens is an error."""
    ids = []
    for word in words:
        # A leading space makes BPE vocabularies (GPT-2, RoBERTa, Llama) pick the word-initial token.
        pieces = tokenizer(" " + word, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
        if len(pieces) != 1:
            raise ConfigError(
                f"head.label_words: {word!r} is {len(pieces)} tokens for this tokenizer; choose one-token words"
            )
        ids.append(int(pieces[0]))
    return ids
