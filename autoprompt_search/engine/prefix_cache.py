"""Frozen-prefix cache: hidden states entering a method's first prompted block, computed once.

Blocks below a configuration's first prompted layer never see a prompt and run in eval mode (no
dropout), so their output depends on the input alone. This cache stores it per (model weights up
to that layer, tokenised split, layer, device type, precision) and hands it to the engine in
`Batch.prefix`, so those blocks run once per example instead of once per step, evaluation and
trial.

Storage is one safetensors file per key, memory-mapped and filled lazily: `hidden` holds every
row's real tokens end to end (same offsets as the tokenised split, no padding stored) and
`filled` one byte per row. A row is computed the first time a batch needs it, written in place,
and marked filled after its data, so concurrent trial processes on one machine share the file
through the page cache (two processes filling the same row write the same values). Files are
created atomically (hard link, never replaced). A size limit evicts the least recently opened
files; a key larger than the limit is not cached. Turn it off with `train.prefix_cache: false`
(`--no-prefix-cache`).

Exactness: on fp32 the cached states are the ones the engine computes, up to the padding width
of the batch (float rounding only): rows are computed in fixed blocks of the split, so the cache
holds the same values whichever trial filled it. Under bf16 autocast they are
stored as bf16. Models whose frozen blocks use dropout lose it there in both paths: the engine
always runs the frozen part in eval mode.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from autoprompt_search.engine.batch import Batch
from autoprompt_search.engine.model import PromptedModel, frozen_eval
from autoprompt_search.engine.precision import uses_bf16
from autoprompt_search.storage.cache_paths import cache_dir

#: torch dtype -> (safetensors name, numpy storage dtype used for the memory map)
_DTYPES: dict[torch.dtype, tuple[str, Any]] = {
    torch.float32: ("F32", np.float32),
    torch.bfloat16: ("BF16", np.uint16),
    torch.float16: ("F16", np.float16),
}


def cache_root() -> Path:
    return cache_dir("prefix")


def _digest(*parts: bytes | str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"|")
    return h.hexdigest()


def _tensor_bytes(t: Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous()
    return t.view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()


def model_digest(model: PromptedModel, layer: int) -> str:
    """Fingerprint of what computes the states entering block `layer`: config + weights below it."""
    bb = model.backbone
    memo: dict[int, str] = bb.__dict__.setdefault("_prefix_digests", {})
    if layer not in memo:
        h = hashlib.blake2b(digest_size=16)
        h.update(type(bb).__name__.encode())
        h.update(bb.config.to_json_string(use_diff=False).encode())
        modules = [*bb.lower_modules, *list(bb.blocks)[:layer]]
        for m in modules:
            for name, value in [*m.named_parameters(), *m.named_buffers()]:
                h.update(name.encode())
                h.update(_tensor_bytes(value))
        memo[layer] = h.hexdigest()
    return memo[layer]


def split_digest(split: Any) -> str:
    memo = split.__dict__.setdefault("_digest", None)
    if memo is None:
        parts = [_tensor_bytes(split.ids), _tensor_bytes(split.offsets)]
        if split.types is not None:
            parts.append(_tensor_bytes(split.types))
        memo = split.__dict__["_digest"] = _digest(*parts)
    return memo


class PrefixStore:
    """One memory-mapped file: every row's real-token states (total, d) and a filled flag per row."""

    def __init__(self, path: Path, offsets: Tensor, hidden_size: int, dtype: torch.dtype) -> None:
        self.path, self.offsets, self.dtype = path, offsets, dtype
        total, rows = int(offsets[-1]), int(offsets.shape[0] - 1)
        name, storage = _DTYPES[dtype]
        item = np.dtype(storage).itemsize
        header = {
            "hidden": {"dtype": name, "shape": [total, hidden_size], "data_offsets": [0, total * hidden_size * item]},
            "filled": {"dtype": "U8", "shape": [rows], "data_offsets": [total * hidden_size * item, 0]},
        }
        header["filled"]["data_offsets"][1] = header["filled"]["data_offsets"][0] + rows
        if not path.is_file():
            _create(path, header)
        start = 8 + struct.unpack("<Q", _head(path))[0]
        hidden = np.memmap(path, dtype=storage, mode="r+", offset=start, shape=(total, hidden_size))
        filled = np.memmap(path, dtype=np.uint8, mode="r+", offset=start + total * hidden_size * item, shape=(rows,))
        self.hidden = torch.from_numpy(hidden)  # (total, d), shares the file's pages
        if dtype == torch.bfloat16:
            self.hidden = self.hidden.view(torch.bfloat16)
        self.filled = torch.from_numpy(filled)  # (N,) uint8
        os.utime(path)  # recency for eviction

    @property
    def lengths(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def _index(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Flat token index (B, T) and real-token mask (B, T), padded like `TokenizedSplit.batch`."""
        starts, lengths = self.offsets[rows], self.lengths[rows]  # (B,)
        cols = torch.arange(int(lengths.max()))[None, :]  # (1, T)
        mask = cols < lengths[:, None]  # (B, T)
        return (starts[:, None] + cols).clamp(max=self.hidden.shape[0] - 1), mask

    def missing(self, rows: Tensor) -> Tensor:
        return rows[self.filled[rows] == 0].unique()

    def write(self, rows: Tensor, states: Tensor) -> None:
        """states (B, T, d) of `rows` (B,); data first, then the flags."""
        index, mask = self._index(rows)
        self.hidden[index[mask]] = states[:, : mask.shape[1]][mask].to("cpu", self.dtype)
        self.filled[rows] = 1

    def read(self, rows: Tensor) -> Tensor:
        """(B, T, d) states of filled `rows`, zeros on padding."""
        index, mask = self._index(rows)
        return self.hidden[index].masked_fill(~mask[..., None], 0)


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(8)


def _create(path: Path, header: dict[str, Any]) -> None:
    """Write a sparse, zero-filled safetensors file; never replaces one another process made."""
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    size = 8 + len(text) + header["filled"]["data_offsets"][1]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(size)
    try:
        os.link(tmp, path)  # atomic, fails if another process got there first: use theirs
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def _disk_bytes(path: Path) -> int:
    # The full size, not the blocks used so far: files fill up lazily after the check.
    return path.stat().st_size


def make_room(root: Path, needed: int, limit: int, keep: Path) -> bool:
    """Evict least recently opened stores until `needed` more bytes fit under `limit`."""
    if needed > limit:
        return False
    files = sorted((p for p in root.glob("*.safetensors") if p != keep), key=lambda p: p.stat().st_mtime)
    used = sum(_disk_bytes(p) for p in files)
    for p in files:
        if used + needed <= limit:
            break
        used -= _disk_bytes(p)
        p.unlink(missing_ok=True)
    return used + needed <= limit


def cache_dtype(device: torch.device, precision: str) -> torch.dtype:
    """bf16 where the trial computes under bf16 autocast, else fp32 (exact)."""
    return torch.bfloat16 if uses_bf16(device, precision) else torch.float32


BLOCK_ROWS = 32  # rows of a split computed together when any of them is first needed


def canonical_blocks(rows: Tensor, n: int) -> list[Tensor]:
    """The fixed blocks of rows (0..31, 32..63, ...) that hold `rows`. A row's states depend on the
    padding width of the batch that computes them (float rounding, ~1e-6), so each row is always
    computed with its own block: what the cache holds is then the same whichever trial, seed or
    batch filled it first, and a configuration trains the same history in any study."""
    blocks = (rows // BLOCK_ROWS).unique().tolist()
    return [torch.arange(b * BLOCK_ROWS, min(n, (b + 1) * BLOCK_ROWS)) for b in blocks]


@dataclass
class PrefixFeeder:
    """Builds device batches carrying cached frozen-prefix states for one model and workspace."""

    model: PromptedModel
    splits: dict[str, Any]  # name -> TokenizedSplit
    layer: int  # cache the states entering this block
    device: torch.device
    dtype: torch.dtype
    limit_bytes: int
    root: Path
    autocast: Any  # () -> context manager: the precision the trial computes in

    def __post_init__(self) -> None:
        self.stores: dict[str, PrefixStore | None] = {}
        self.hits = self.misses = 0

    def store(self, name: str) -> PrefixStore | None:
        if name not in self.stores:
            split = self.splits[name]
            key = _digest(
                model_digest(self.model, self.layer),
                split_digest(split),
                str(self.layer),
                self.device.type,
                str(self.dtype),
            )
            path = self.root / f"{key}.safetensors"
            d = self.model.backbone.hidden_size
            needed = int(split.offsets[-1]) * d * torch.tensor([], dtype=self.dtype).element_size() + len(split)
            fits = path.is_file() or make_room(self.root, needed, self.limit_bytes, path)
            self.stores[name] = PrefixStore(path, split.offsets, d, self.dtype) if fits else None
        return self.stores[name]

    def batch(self, name: str, rows: Tensor) -> Batch:
        """The rows' device batch, with `prefix` filled from (and, for new rows, into) the cache."""
        split = self.splits[name]
        batch = split.batch(rows)
        store = self.store(name)
        if store is None:
            return batch.to(self.device)
        todo = store.missing(rows)
        for block in canonical_blocks(todo, len(split)):
            fresh = split.batch(block).to(self.device)
            with self.autocast(), frozen_eval(self.model.backbone):  # never store a dropout sample
                states = self.model.text_states(fresh, self.layer)  # (b, t, d)
            store.write(block, states)
        self.misses += len(todo)
        self.hits += len(rows) - len(todo)
        batch.prefix, batch.prefix_layer = store.read(rows), self.layer
        return batch.to(self.device)
