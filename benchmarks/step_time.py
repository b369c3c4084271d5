"""One training step, same batch: full fine-tuning vs all-layer deep prompts vs LPT at k = N/2 vs LPT
with the frozen-prefix cache, through our engine and through a minimal hand-written layer loop.

A step is forward + cross-entropy + backward + AdamW. Times are medians over `--iters` steps after
`--warmup` steps, every mode timed in one process, interleaved round by round, so the ratios are
side by side. Memory: on GPU the peak allocated during a step above what was allocated before it;
on both devices the bytes autograd saves for backward (the activation memory a mode costs).

The hand-written loop calls the Hugging Face modules directly (embeddings, then each block with no
attention mask: every token visible), concatenates prompt slots itself and reads a device-resident
tensor for the cached mode: the floor for this design. Ours runs `PromptedModel` (per-row layouts
and boolean attention masks) and, cached, reads the states from the on-disk cache (`PrefixFeeder`)
every step, as training does.

Full fine-tuning is "every block trainable + an input prompt" in both loops (the word embedding
table stays frozen), so the same engine path runs it.

Usage:
  python benchmarks/step_time.py --model minilm-l6 --batch 32 --length 128 --out results/benchmarks/step_time_cpu_minilm
  python benchmarks/step_time.py --random roberta-large --precision bf16 --out results/benchmarks/step_time_h100_roberta_large
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from autoprompt_search.backbones import Backbone, BackboneInfo, backbone_from_config, load_backbone
from autoprompt_search.engine.heads import ClassifierHead
from autoprompt_search.engine.model import Batch, PromptedModel
from autoprompt_search.engine.precision import autocast
from autoprompt_search.engine.prefix_cache import PrefixFeeder, cache_dtype
from autoprompt_search.methods import DeepConfig, LateConfig, build_method

MODES = ("full-ft", "deep-all", "lpt", "lpt-cached")


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"


def make_backbone(args: argparse.Namespace) -> Backbone:
    if args.random:
        from transformers import AutoConfig

        presets = {
            "roberta-large": dict(
                model_type="roberta", hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                intermediate_size=4096, vocab_size=50265, max_position_embeddings=514, pad_token_id=1,
                type_vocab_size=1,
            ),
            "roberta-base": dict(
                model_type="roberta", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                intermediate_size=3072, vocab_size=50265, max_position_embeddings=514, pad_token_id=1,
                type_vocab_size=1,
            ),
        }  # fmt: skip
        kw = dict(presets[args.random])
        config = AutoConfig.for_model(kw.pop("model_type"), **kw)
        return backbone_from_config(config)
    return load_backbone(args.model)


# ---- the hand-written loop -----------------------------------------------------------------
class HandLoop(nn.Module):
    """BERT-family blocks called directly; prompts concatenated by hand; no attention mask."""

    def __init__(self, bb: Backbone, mode: str, length: int, layer: int, bottleneck: int, classes: int) -> None:
        super().__init__()
        self.bb, self.mode, self.length, self.layer = bb, mode, length, layer
        d, n = bb.hidden_size, bb.num_layers
        if mode == "deep-all":
            self.prompts = nn.Parameter(torch.randn(n, length, d) * 0.02)
        elif mode == "full-ft":
            self.prompts = nn.Parameter(torch.randn(1, length, d) * 0.02)
        else:  # LPT's NPG generator on the first token
            self.down, self.up = nn.Linear(d, bottleneck), nn.Linear(bottleneck, length * d)
        self.head = nn.Linear(d, classes)

    def embed(self, ids: Tensor, prompt: Tensor | None) -> Tensor:
        emb = self.bb.model.embeddings
        word = emb.word_embeddings(ids)  # (B, T, d), frozen table
        if prompt is not None:
            word = torch.cat([prompt.expand(ids.shape[0], -1, -1), word], 1)
        s = word.shape[1]
        pos = torch.arange(s, device=ids.device)[None, :] + self.bb.position_offset
        return emb(inputs_embeds=word, position_ids=pos, token_type_ids=torch.zeros_like(pos))

    def lower(self, ids: Tensor) -> Tensor:
        """States entering block `layer`, text only, no autograd: (B, T, d)."""
        with torch.no_grad():
            h = self.embed(ids, None)
            for block in list(self.bb.blocks)[: self.layer]:
                h = _block(block, h)
        return h

    def forward(self, ids: Tensor, cached: Tensor | None = None) -> Tensor:
        blocks = list(self.bb.blocks)
        if self.mode in ("full-ft", "deep-all"):
            h = self.embed(ids, self.prompts[0])
            for i, block in enumerate(blocks):
                if self.mode == "deep-all" and i > 0:
                    h = torch.cat([self.prompts[i].expand(h.shape[0], -1, -1), h[:, self.length :]], 1)
                h = _block(block, h)
        else:
            h = cached if cached is not None else self.lower(ids)
            b, _, d = h.shape
            prompt = self.up(torch.relu(self.down(h[:, 0]))).view(b, self.length, d)
            h = torch.cat([prompt, h], 1)
            for block in blocks[self.layer :]:
                h = _block(block, h)
        return self.head(h[:, self.length])  # the [CLS] token


def _block(block: nn.Module, h: Tensor) -> Tensor:
    out = block(h)
    return out[0] if isinstance(out, tuple) else out


# ---- ours -------------------------------------------------------------------------------------
def ours(bb: Backbone, mode: str, length: int, layer: int, bottleneck: int, classes: int) -> PromptedModel:
    info = BackboneInfo.of(bb)
    n = bb.num_layers
    if mode == "deep-all":
        cfg: Any = DeepConfig(layers=tuple(range(n)), length=length)
    elif mode == "full-ft":
        cfg = DeepConfig(layers=(0,), length=length)
    else:
        cfg = LateConfig(layer=layer, length=length, bottleneck=bottleneck, dropout=0.0)
    method = build_method(cfg, info)
    g = torch.Generator().manual_seed(0)
    method.init_parameters(bb.word_embeddings, g)  # type: ignore[union-attr]
    head = ClassifierHead(bb, classes, "first")
    head.init_parameters(g)
    return PromptedModel(bb, method, head)


class FixedSplit:
    """The benchmark batch as a one-split dataset, for the cache (`TokenizedSplit`'s interface)."""

    def __init__(self, ids: Tensor, labels: Tensor) -> None:
        b, t = ids.shape
        self.ids = ids.flatten().int()
        self.types = None
        self.offsets = torch.arange(b + 1, dtype=torch.int64) * t
        self.labels = labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def lengths(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def batch(self, rows: Tensor) -> Batch:
        t = int(self.lengths[0])
        ids = self.ids.view(-1, t)[rows].long()
        return Batch(ids, torch.ones_like(ids, dtype=torch.bool), None, self.labels[rows])


# ---- timing -----------------------------------------------------------------------------------
class SavedBytes:
    """Bytes autograd saves for backward during a forward pass (each storage once, weights excluded)."""

    def __init__(self, exclude: set[int]) -> None:
        self.total = 0
        self.seen = set(exclude)

    def pack(self, t: Tensor) -> Tensor:
        key = t.untyped_storage().data_ptr()
        if key not in self.seen:
            self.seen.add(key)
            self.total += t.untyped_storage().nbytes()
        return t


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--random", default="", help="roberta-large | roberta-base: random weights of that size")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128, help="tokens per row (no padding)")
    parser.add_argument("--prompt", type=int, default=5, help="prompt length L")
    parser.add_argument("--layer", type=int, default=-1, help="LPT insertion layer k (default N/2)")
    parser.add_argument("--bottleneck", type=int, default=128)
    parser.add_argument("--precision", default="auto", help="auto | fp32 | bf16")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default="")
    return parser.parse_args()


Key = tuple[str, str]  # (implementation: ours | hand, mode)


def build_steps(
    args: argparse.Namespace, bb: Any, k: int, device: torch.device
) -> tuple[dict[Key, Callable[[], Tensor]], dict[Key, list[nn.Parameter]]]:
    """Each (implementation, mode)'s forward returning the loss, and its trainable parameters."""
    torch.manual_seed(0)
    ids = torch.randint(5, int(bb.config.vocab_size), (args.batch, args.length))
    labels = torch.randint(0, 2, (args.batch,))
    split = FixedSplit(ids, labels)
    rows = torch.arange(args.batch)
    dev_ids, dev_labels = ids.to(device), labels.to(device)
    cache_dir = tempfile.mkdtemp(prefix="bench-prefix-")
    steps: dict[Key, Callable[[], Tensor]] = {}
    params_of: dict[Key, list[nn.Parameter]] = {}
    for mode in MODES:
        model = ours(bb, mode, args.prompt, k, args.bottleneck, 2).to(device).train()
        feeder = None
        if mode == "lpt-cached":
            feeder = PrefixFeeder(
                model, {"train": split}, k, device, cache_dtype(device, args.precision), 2**40, Path(cache_dir),
                lambda: autocast(device, args.precision),
            )  # fmt: skip
            feeder.batch("train", rows)  # fill once; every timed step reads it back from the file

        def fetch(feeder: PrefixFeeder | None = feeder) -> Batch:
            return feeder.batch("train", rows) if feeder is not None else Batch(dev_ids, dev_ids > -1, None, dev_labels)

        hand = HandLoop(bb, mode, args.prompt, k, args.bottleneck, 2).to(device).train()
        cached = hand.lower(dev_ids).detach() if mode == "lpt-cached" else None

        def ours_forward(model: PromptedModel = model, fetch: Callable[[], Batch] = fetch) -> Tensor:
            batch = fetch()
            return nn.functional.cross_entropy(model(batch).float(), batch.labels)

        def hand_forward(hand: HandLoop = hand, cached: Tensor | None = cached) -> Tensor:
            return nn.functional.cross_entropy(hand(dev_ids, cached).float(), dev_labels)

        for impl, fwd, module in (("ours", ours_forward, model), ("hand", hand_forward, hand)):
            params = [p for name, p in module.named_parameters() if not name.startswith("bb.") and p.requires_grad]
            steps[(impl, mode)] = fwd
            params_of[(impl, mode)] = params
    return steps, params_of


def time_steps(
    args: argparse.Namespace,
    bb: Any,
    steps: dict[Key, Callable[[], Tensor]],
    params_of: dict[Key, list[nn.Parameter]],
    device: torch.device,
) -> dict[Key, dict[str, Any]]:
    """Median step time, bytes saved for backward and (GPU) peak memory of each (implementation, mode)."""
    block_params = [p for blk in bb.blocks for p in blk.parameters()]
    weights = {p.untyped_storage().data_ptr() for p in bb.parameters()}
    opts = {}
    for key in steps:
        groups: list[dict[str, Any]] = [{"params": params_of[key], "lr": 1e-4}]
        if key[1] == "full-ft":  # lr 0: AdamW's full arithmetic on every weight, weights unchanged
            groups.append({"params": block_params, "lr": 0.0})
        opts[key] = torch.optim.AdamW(groups)
    times: dict[Key, list[float]] = {key: [] for key in steps}
    saved = {key: SavedBytes(weights) for key in steps}
    peak = dict.fromkeys(steps, 0)
    for it in range(args.warmup + args.iters):  # round by round: every mode sees the same machine state
        for key, fwd in steps.items():
            for p in block_params:
                p.requires_grad_(key[1] == "full-ft")
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            t0 = time.perf_counter()
            pack = saved[key].pack if it == args.warmup else (lambda t: t)
            with autocast(device, args.precision), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = fwd()
            opts[key].zero_grad(set_to_none=True)
            loss.backward()
            opts[key].step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                peak[key] = max(peak[key], torch.cuda.max_memory_allocated(device) - base)
            if it >= args.warmup:
                times[key].append(time.perf_counter() - t0)
    for p in block_params:
        p.requires_grad_(False)
    return {
        key: {
            "impl": key[0],
            "mode": key[1],
            "ms": 1000 * statistics.median(times[key]),
            "saved_mib": saved[key].total / 2**20,
            "peak_mib": peak[key] / 2**20 if device.type == "cuda" else None,
        }
        for key in steps
    }


def table(args: argparse.Namespace, results: dict[Key, dict[str, Any]], bb: Any, k: int, device: torch.device) -> str:
    """The markdown table: ours vs the hand-written loop per mode, and each vs deep-all."""
    name = args.random + " (random weights)" if args.random else args.model
    lines = [
        f"# One training step on {machine(device)}",
        "",
        f"Model {name}: {bb.num_layers} blocks, d={bb.hidden_size}; batch {args.batch} x {args.length} tokens, "
        f"prompt length {args.prompt}, LPT k={k} (NPG, r={args.bottleneck}), precision {args.precision}; median of "
        f"{args.iters} steps after {args.warmup} warm-up steps. Command: `python benchmarks/step_time.py "
        + " ".join(f"--{a.replace('_', '-')} {v}" for a, v in vars(args).items() if v not in ("", None) and a != "out")
        + "`",
        "",
        "| mode | ours ms | hand ms | ours / hand | ours vs deep-all (time) | hand vs deep-all (time) "
        "| saved for backward MiB, ours | hand | ours vs deep-all (memory) | hand vs deep-all (memory) |"
        + (" peak MiB ours | peak MiB hand |" if device.type == "cuda" else ""),
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if device.type == "cuda" else ""),
    ]
    mem = "peak_mib" if device.type == "cuda" else "saved_mib"
    for mode in MODES:
        o, h = results[("ours", mode)], results[("hand", mode)]
        od, hd = results[("ours", "deep-all")], results[("hand", "deep-all")]
        row = (
            f"| {mode} | {o['ms']:.1f} | {h['ms']:.1f} | {o['ms'] / h['ms']:.2f} | {o['ms'] / od['ms']:.2f} | "
            f"{h['ms'] / hd['ms']:.2f} | {o['saved_mib']:.1f} | {h['saved_mib']:.1f} | {o[mem] / od[mem]:.2f} | "
            f"{h[mem] / hd[mem]:.2f} |"
        )
        if device.type == "cuda":
            row += f" {o['peak_mib']:.0f} | {h['peak_mib']:.0f} |"
        lines.append(row)
    what = "the peak allocated during a step" if device.type == "cuda" else "the bytes saved for backward"
    lines += ["", f"Memory ratios use {what}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    device = torch.device(
        "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    )
    bb = make_backbone(args).to(device)
    k = args.layer if args.layer >= 0 else bb.num_layers // 2
    steps, params_of = build_steps(args, bb, k, device)
    results = time_steps(args, bb, steps, params_of, device)
    for row in results.values():
        print(json.dumps(row), flush=True)
    text = table(args, results, bb, k, device)
    print(text)
    if args.out:
        name = args.random + " (random weights)" if args.random else args.model
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(text, encoding="utf-8")
        out.with_suffix(".jsonl").write_text(
            "".join(json.dumps(dict(r, machine=machine(device), model=name)) + "\n" for r in results.values()),
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
