"""A fingerprint of what the training loop produces, to show a restructuring changed nothing.

Trains six methods (hidden-state and key/value deep prompts, LPT, SPT-DARTS with its gate search,
dynamic prompting, the linear probe), each with and without the frozen-prefix cache, plus a run
resumed from its first evaluation and one stopped at its first, on the packaged MiniLM-L6 (dropout
0.1 on) and local SST-2 files, 12 steps each; then prints one SHA-256 over every best state (the
tensors' bytes), history, status and dev/test metric. Run it at two commits: equal digests mean
bit-identical training.

    python scripts/training_fingerprint.py --data-dir ../shared/data/glue/SST-2 [--save runs.pt]
    python scripts/training_fingerprint.py --load runs.pt     # the digest of a saved run
"""

from __future__ import annotations

import argparse
import hashlib
import json
from typing import Any

import torch

METHODS: dict[str, dict[str, Any]] = {
    "deep-hidden": {"name": "deep", "layers": [1, 3], "length": 4},
    "deep-kv": {"name": "deep", "layers": [0, 1, 2, 3, 4, 5], "length": 3, "form": "kv"},
    "late": {"name": "late", "layer": 3, "length": 4, "bottleneck": 16},
    "spt-search": {"name": "spt", "search": True, "length": 3, "bottleneck": 8, "top_k": 2},
    "dp": {"name": "dp", "length": 3, "pool": 2},
    "probe": {"name": "probe"},
}


def runs(data_dir: str) -> dict[str, dict[str, Any]]:
    from autoprompt_search.config import ExperimentConfig
    from autoprompt_search.training.loop import train_experiment
    from autoprompt_search.training.workspace import prepare_workspace

    base = {
        "model": "minilm-l6",
        "data": {"task": "sst2", "source": "files", "data_dir": data_dir, "max_length": 32, "max_train": 256},
        "train": {"steps": 12, "eval_every": 4, "batch_size": 8, "device": "cpu", "seed": 3, "lr": 3e-2},
    }

    def config(method: dict[str, Any], cache: bool = False) -> Any:
        return ExperimentConfig.from_dict({**base, "method": method, "train": {**base["train"], "prefix_cache": cache}})

    ws = prepare_workspace(config(METHODS["probe"]))
    out: dict[str, dict[str, Any]] = {}
    for key, method in METHODS.items():
        for cache in (False, True):
            r = train_experiment(config(method, cache), ws)
            out[f"{key}-{cache}"] = {"state": r.best_state, "history": r.history, "status": r.status,
                                     "dev": r.metrics["dev"], "test": r.metrics.get("test")}  # fmt: skip
            print(key, "cache" if cache else "no cache", r.status, [round(h["eval_score"], 4) for h in r.history])
    states: list[Any] = []
    train_experiment(
        config(METHODS["deep-hidden"]), ws, on_eval=lambda rec, s, c: states.append(rec["training_state"]())
    )
    r = train_experiment(config(METHODS["deep-hidden"]), ws, resume=states[0])
    out["resumed"] = {"state": r.best_state, "history": r.history, "status": r.status, "test": r.metrics.get("test")}
    r = train_experiment(config(METHODS["deep-hidden"]), ws, on_eval=lambda rec, s, c: rec["step"] >= 4)
    out["stopped"] = {"state": r.best_state, "history": r.history, "status": r.status}
    return out


def digest(result: dict[str, dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for key in sorted(result):
        run = result[key]
        h.update(key.encode())
        for name in sorted(run["state"]):
            h.update(name.encode() + run["state"][name].contiguous().numpy().tobytes())
        rest = {k: v for k, v in run.items() if k != "state"}
        h.update(json.dumps(rest, sort_keys=True, default=str).encode())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="../shared/data/glue/SST-2")
    ap.add_argument("--save", default="")
    ap.add_argument("--load", default="")
    args = ap.parse_args()
    result = torch.load(args.load, weights_only=False) if args.load else runs(args.data_dir)
    if args.save:
        torch.save(result, args.save)
    print("sha256", digest(result))


if __name__ == "__main__":
    main()
