"""The peers of benchmarks/quality.py and benchmarks/automl.py, trained through transformers and peft themselves.

Runs in its own virtual environment (peft 0.21's prefix tuning needs transformers <= 5.17 on
BERT), one (arm, learning rate, seed) per call, and prints one JSON line. It reads the data through
autoprompt_search (installed there with --no-deps) so that both sides see the same tokens, the
same batches in the same order (`train_batches`), the same schedule (`lr_lambda`) and the same
metrics; everything that trains is peft's or transformers' own:

- `peft-prompt`: peft PromptTuningConfig, L virtual tokens at the input (peft's default random init)
- `peft-prefix`: peft PrefixTuningConfig, L key/value prefixes in every layer (no projection)
- `peft-lora`: peft LoraConfig, r=8, alpha=16, dropout 0.1 on the query and value projections of
  every layer
- `full-ft`: every weight of AutoModelForSequenceClassification
- `hf-probe`: the classification head only (pooler and base frozen)

The head is AutoModelForSequenceClassification's (pooler, dropout 0.1, linear), trained in every arm
(the peft arms through peft's SEQ_CLS `modules_to_save`: the classifier, not the pooler). The
learning rate is `--lr`, a parameter of every call. `worker_seconds` is measured as the study's
Train workers measure theirs: wall seconds from before the data and the model load to the last dev
evaluation (the test scoring after it is not counted).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from autoprompt_search.data import TokenizedSplit
    from autoprompt_search.engine.model import Batch

ARMS = ("peft-prompt", "peft-prefix", "peft-lora", "full-ft", "hf-probe")


def build(arm: str, model_path: str, num_labels: int, length: int) -> tuple[torch.nn.Module, int]:
    """The arm's model and the parameter count of the model as loaded (encoder + head, no adapter)."""
    import peft
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels)
    base_params = sum(p.numel() for p in model.parameters())
    if arm == "full-ft":
        return model, base_params
    if arm == "hf-probe":
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("classifier"))
        return model, base_params
    if arm == "peft-prompt":
        config = peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=length)
    elif arm == "peft-lora":
        config = peft.LoraConfig(
            task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"]
        )
    else:
        config = peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=length)
    return peft.get_peft_model(model, config), base_params


def logits_of(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.text_mask.long()}
    if batch.token_types is not None:
        kwargs["token_type_ids"] = batch.token_types
    return model(**kwargs).logits


@torch.no_grad()
def evaluate(model: torch.nn.Module, split: TokenizedSplit, metric: str, num_classes: int) -> dict:
    from autoprompt_search.training.evaluation import eval_batches
    from autoprompt_search.training.metrics import classification_metrics

    model.eval()
    preds = torch.empty(len(split), dtype=torch.long)
    for rows in eval_batches(split, 128):
        preds[rows] = logits_of(model, split.batch(rows)).argmax(-1)
    model.train()
    return classification_metrics(preds, split.labels, num_classes, metric)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arm", choices=ARMS, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--max-train", type=int, default=0, help="a seeded subset of the training set (0 = all)")
    ap.add_argument("--dev-as-test", action="store_true", help="the dev split is the test, dev is carved from train")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--length", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--time-steps", type=int, default=0, help="only time this many steps (after 5 warm-up)")
    return ap.parse_args()


def train_loop(model: torch.nn.Module, splits: dict, args: argparse.Namespace, metric: str, classes: int) -> dict:
    """AdamW with the shared recipe; the best dev state is loaded back into `model` at the end."""
    from autoprompt_search.training.recipe import lr_lambda, param_groups, train_batches

    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    params = list(named.values())
    # Our groups (no decay on biases and norm weights, as transformers' Trainer): the same recipe.
    optimizer = torch.optim.AdamW(param_groups(named, args.weight_decay), lr=args.lr, weight_decay=args.weight_decay)
    steps = args.time_steps + 5 if args.time_steps else args.steps
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(steps, 0.06))
    train = splits["train"]
    batches = train_batches(torch.arange(len(train)), args.batch_size, args.seed)
    eval_every = max(1, args.steps // 5)
    best, best_state, best_step, best_dev, times = -math.inf, None, 0, None, []
    step, diverged = 0, False
    for step in range(1, steps + 1):
        batch = train.batch(next(batches))
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(logits_of(model, batch), batch.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        times.append(time.perf_counter() - t0)
        if not math.isfinite(loss.item()):
            diverged = True
            break
        if not args.time_steps and (step % eval_every == 0 or step == steps):
            dev = evaluate(model, splits["dev"], metric, classes)
            if dev["score"] > best:
                best, best_step, best_dev = dev["score"], step, dev
                best_state = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    if not args.time_steps and best_state is None:  # diverged before the first evaluation: score what is left
        best_dev = evaluate(model, splits["dev"], metric, classes)
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    out: dict[str, Any] = {"times": times, "steps_run": step, "diverged": diverged}
    return out | {"best_dev": best_dev, "best_step": best_step, "trainable_params": sum(p.numel() for p in params)}


def main() -> None:
    from reporting import code_version  # this script's directory is on sys.path

    args = parse_args()
    torch.set_num_threads(args.threads)

    import peft
    import transformers

    from autoprompt_search.backbones import resolve_model
    from autoprompt_search.data import DataConfig, load_task_data, tokenize
    from autoprompt_search.training.workspace import load_tokenizer

    started = time.perf_counter()
    code = code_version()  # the code that starts the run (the checkout may change while it runs)
    data_cfg = DataConfig(
        task=args.task,
        data_dir=args.data_dir,
        max_length=args.max_length,
        max_train=args.max_train,
        dev_as_test=args.dev_as_test,
    )
    data = load_task_data(data_cfg)
    tokenizer = load_tokenizer(args.model)
    splits = {name: tokenize(tokenizer, ex, args.max_length, False) for name, ex in data.splits.items()}
    num_classes, metric = len(data.task.labels), data.task.metric

    torch.manual_seed(args.seed)  # the head's (and peft's) initialisation
    model, base_params = build(args.arm, resolve_model(args.model).path, num_classes, args.length)
    run = train_loop(model.train(), splits, args, metric, num_classes)
    worker_seconds = time.perf_counter() - started
    times = run["times"]
    row = {
        "arm": args.arm,
        "seed": args.seed,
        "lr": args.lr,
        "threads": args.threads,
        "trainable_params": run["trainable_params"],
        "total_params": sum(p.numel() for p in model.parameters()),
        "base_params": base_params,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "code": code,  # quality.py's code_version, taken when the run started
    }
    if args.time_steps:
        row["ms_per_step"] = 1000 * sorted(times[5:])[len(times[5:]) // 2]
    else:
        row |= {
            "dev": run["best_dev"],
            "best_step": run["best_step"],
            "steps_run": run["steps_run"],
            "diverged": run["diverged"],
            "collapsed": bool(run["best_dev"]["collapsed"]),
            "train_seconds": sum(times),
            "worker_seconds": worker_seconds,
            "ms_per_step": 1000 * sum(times) / len(times),
        }
        if "test" in splits:
            row["test"] = evaluate(model, splits["test"], metric, num_classes)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
