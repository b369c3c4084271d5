"""A constructed task on which only one prompt position lets a model answer: DP's estimator check.

A tiny random BERT whose position embeddings from T on are replaced by large noise: a text token
pushed to position >= T is unreadable (after the embedding LayerNorm only the noise remains). The
label is carried by the last of T text tokens (a strong word vector, +v or -v) and a mean-pooling
head reads the text. With an L-slot dynamic prompt, position j puts L - j slots before the text,
so the label token sits at position (L - j) + T - 1: readable only for j = L (the whole prompt
after the input). Task-level DP must learn to put its prompt there.

Run: `python benchmarks/dp_estimator.py [--steps 100] [--seeds 3]` prints, per seed, the learned
position logits and accuracy for the mixing estimator and for the old one (the chosen prompt
scaled by its sample, GDAS-style: the fallback rotary backbones still use). A test checks the
mixing estimator solves it.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform

import torch
from torch.nn import functional as F

from autoprompt_search.backbones import BackboneInfo, backbone_from_config
from autoprompt_search.engine.heads import ClassifierHead
from autoprompt_search.engine.model import Batch, PromptedModel
from autoprompt_search.methods import DpConfig, build_method
from autoprompt_search.methods.noise import seed_noise

TEXT = 4  # T text tokens
PROMPT = 3  # L prompt slots; the answer needs position j = L
POSITIVE, NEGATIVE = 50, 60  # the label words


def _batch(n: int, generator: torch.Generator) -> tuple[Batch, torch.Tensor]:
    labels = torch.randint(0, 2, (n,), generator=generator)
    ids = torch.randint(5, 120, (n, TEXT), generator=generator)
    ids[:, -1] = torch.where(labels == 1, POSITIVE, NEGATIVE)
    return Batch(ids, torch.ones(n, TEXT, dtype=torch.bool)), labels


def train_position_task(mixing: bool, steps: int, seed: int, lr: float = 0.05) -> tuple[list[float], float]:
    """Train task-level DP (position only) for `steps`; returns its position logits (L+1) and
    accuracy on 256 fresh rows (eval: the argmax position). `mixing=False`: the old estimator."""
    from transformers import BertConfig

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    bb = backbone_from_config(config, seed=0)
    with torch.no_grad():
        positions = bb.model.embeddings.position_embeddings.weight
        positions[TEXT:] = 1e3 * torch.randn(positions[TEXT:].shape)  # positions >= T drown the token
        words = bb.word_embeddings.weight
        label = torch.randn(words.shape[1])
        words[POSITIVE], words[NEGATIVE] = label, -label
    info = BackboneInfo.of(bb)
    if not mixing:
        info = dataclasses.replace(info, positions_in_embeddings=False)  # selects the scaling fallback
    method = build_method(DpConfig(length=PROMPT, pool=1, level="task", choose=("position",)), info)
    assert method is not None
    method.init_parameters(bb.word_embeddings, torch.Generator().manual_seed(seed))
    seed_noise(method, seed)
    model = PromptedModel(bb, method, ClassifierHead(bb, 2, pooler=False, pooling="mean"))
    optimizer = torch.optim.Adam(list(model.trainable_parameters().values()), lr=lr)
    data = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(1, steps + 1):
        method.on_step(step, steps)
        batch, labels = _batch(16, data)
        loss = F.cross_entropy(model(batch), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    batch, labels = _batch(256, data)
    with torch.no_grad():
        accuracy = (model(batch).argmax(-1) == labels).float().mean().item()
    return method.logits["position"].detach().tolist(), accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"# DP position task (T={TEXT}, L={PROMPT}; only j={PROMPT} answers), {args.steps} steps, CPU {platform.processor() or platform.machine()}"
    )
    print("| estimator | seed | chosen j | accuracy | position logits |")
    print("|---|---|---|---|---|")
    for mixing in (True, False):
        for seed in range(args.seeds):
            logits, accuracy = train_position_task(mixing, args.steps, seed)
            chosen = max(range(len(logits)), key=lambda j: logits[j])
            name = "mixing (now)" if mixing else "chosen-option scale (before)"
            print(f"| {name} | {seed} | {chosen} | {accuracy:.3f} | {', '.join(f'{v:+.2f}' for v in logits)} |")


if __name__ == "__main__":
    main()
