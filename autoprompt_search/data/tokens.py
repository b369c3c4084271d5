"""Tokenise once per (tokenizer, examples, max length), cache on disk, batch with dynamic padding.

A split is stored ragged: all token ids end to end plus offsets, so batches pad only to their
own longest row. The cache key hashes the tokenizer's full definition and the examples, so a
changed file or tokenizer never reuses stale tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from autoprompt_search.data.sources import Examples
from autoprompt_search.engine.batch import Batch
from autoprompt_search.storage.cache_paths import cache_dir


@dataclass
class TokenizedSplit:
    ids: Tensor  # (total,) int32, every row's tokens end to end
    types: Tensor | None  # (total,) int8 token type ids, or None
    offsets: Tensor  # (N + 1,) int64, row i is ids[offsets[i]:offsets[i+1]]
    labels: Tensor  # (N,) int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def lengths(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def batch(self, rows: Tensor) -> Batch:
        """Rows (B,) -> a padded `Batch`; pads to the longest row in it."""
        starts, lengths = self.offsets[rows], self.lengths[rows]  # (B,)
        width = int(lengths.max())
        cols = torch.arange(width)[None, :]  # (1, T)
        mask = cols < lengths[:, None]  # (B, T)
        index = (starts[:, None] + cols).clamp(max=self.ids.shape[0] - 1)  # (B, T)
        ids = self.ids[index].long().masked_fill(~mask, 0)
        types = None if self.types is None else self.types[index].long().masked_fill(~mask, 0)
        return Batch(ids, mask, types, self.labels[rows])


def tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None), spec.pop("padding", None)  # call state, not the tokenizer
        text = json.dumps(spec, sort_keys=True)
    else:
        text = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = json.dumps([type(tokenizer).__name__, tokenizer.all_special_tokens, tokenizer.padding_side])
    return hashlib.sha256((text + extra).encode()).hexdigest()


def _examples_fingerprint(examples: Examples) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([examples.text_a, examples.text_b, examples.labels]).encode())
    return h.hexdigest()


_MEMO: dict[str, TokenizedSplit] = {}


def tokenize(
    tokenizer: Any, examples: Examples, max_length: int, append_mask: bool = False, use_cache: bool = True
) -> TokenizedSplit:
    """Tokenise with truncation to `max_length`; `append_mask` puts the mask token before the last
    special token (label-word heads of encoders read it)."""
    key = hashlib.sha256(
        f"{tokenizer_fingerprint(tokenizer)}|{_examples_fingerprint(examples)}|{max_length}|{append_mask}".encode()
    ).hexdigest()[:32]
    if key in _MEMO:
        return _MEMO[key]
    path = cache_dir("tokens") / f"{key}.safetensors"
    split = _cached(path) if use_cache else None
    if split is None:
        split = _tokenize(tokenizer, examples, max_length, append_mask)
        if use_cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            save_file(_to_tensors(split), str(tmp))
            os.replace(tmp, path)  # atomic: concurrent trials never read half a file
    _MEMO[key] = split
    return split


def _cached(path: Path) -> TokenizedSplit | None:
    """A tokenised split from the cache; None when it is not there or unreadable (a cache file
    cut short, say by a full disk, is tokenised again and replaced)."""
    from safetensors import SafetensorError

    if not path.is_file():
        return None
    try:
        return _from_tensors(load_file(str(path)))
    except (SafetensorError, OSError, KeyError):
        return None


def _tokenize(tokenizer: Any, examples: Examples, max_length: int, append_mask: bool) -> TokenizedSplit:
    budget = max_length - 1 if append_mask else max_length
    enc = tokenizer(
        examples.text_a,
        examples.text_b,
        truncation=True,
        max_length=budget,
        return_token_type_ids=True,
    )
    rows: list[list[int]] = enc["input_ids"]
    types: list[list[int]] | None = enc.get("token_type_ids")
    if append_mask:
        mask_id = tokenizer.mask_token_id
        rows = [[*r[:-1], mask_id, *r[-1:]] for r in rows]
        if types is not None:
            types = [t[:-1] + t[-1:] + t[-1:] for t in types]
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    offsets = torch.zeros(len(rows) + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    ids = torch.tensor([t for r in rows for t in r], dtype=torch.int32)
    flat_types = None
    if types is not None and any(any(t) for t in types):
        flat_types = torch.tensor([t for r in types for t in r], dtype=torch.int8)
    return TokenizedSplit(ids, flat_types, offsets, torch.tensor(examples.labels, dtype=torch.int64))


def _to_tensors(split: TokenizedSplit) -> dict[str, Tensor]:
    out = {"ids": split.ids, "offsets": split.offsets, "labels": split.labels}
    if split.types is not None:
        out["types"] = split.types
    return out


def _from_tensors(t: dict[str, Tensor]) -> TokenizedSplit:
    return TokenizedSplit(t["ids"], t.get("types"), t["offsets"], t["labels"])
