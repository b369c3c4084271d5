"""Fused trial groups: K configurations in one batch train exactly as they would alone."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_configs
from test_training import experiment

from autoprompt_search.backbones import backbone_from_config
from autoprompt_search.config import ExperimentConfig
from autoprompt_search.errors import ConfigError
from autoprompt_search.methods import DeepConfig, LateConfig, ProbeConfig
from autoprompt_search.training.fused_loop import train_group
from autoprompt_search.training.loop import TrainResult, train_experiment
from autoprompt_search.training.workspace import build_model, prepare_workspace


def members(model_dir: str, data_dir: str, **kw: object) -> list[ExperimentConfig]:
    """Three members differing in learning rate, prompt length, layer set, position, method and seed."""
    return [
        experiment(model_dir, data_dir, DeepConfig(layers=(0,), length=2), lr=1e-1, seed=1, **kw),
        experiment(model_dir, data_dir, DeepConfig(layers=(1, 3), length=4, position="split", split_at=2), lr=3e-2,
                   seed=2, **kw),
        experiment(model_dir, data_dir, LateConfig(layer=2, length=3, bottleneck=8, dropout=0.0), lr=5e-3, seed=3,
                   weight_decay=0.1, **kw),
    ]  # fmt: skip


def assert_same(fused: TrainResult, alone: TrainResult) -> None:
    assert fused.best_state.keys() == alone.best_state.keys()
    for name, value in alone.best_state.items():
        torch.testing.assert_close(fused.best_state[name], value, rtol=1e-4, atol=1e-5)
    assert [h["eval_score"] for h in fused.history] == [h["eval_score"] for h in alone.history]
    assert fused.metrics["test"]["score"] == alone.metrics["test"]["score"]


def test_group_of_three_equals_each_trained_alone(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    cfgs = members(tiny_model_dir, tiny_sst_dir, steps=8, eval_every=4, prefix_cache=False)
    ws = prepare_workspace(cfgs[0])
    fused = train_group(cfgs, ws)
    for f, cfg in zip(fused, cfgs, strict=True):
        alone = train_experiment(cfg, ws)
        # a tiny member may predict one class at both evaluations (collapsed), alone as in the group
        assert f.status == alone.status in ("TERMINATED", "COLLAPSED") and f.metrics["group_size"] == 3
        assert_same(f, alone)


@pytest.mark.parametrize("family", ["gpt2", "llama", "roberta"])
def test_group_equals_alone_on_other_families(tiny_model_dir: str, tiny_sst_dir: str, family: str) -> None:
    cfgs = members(tiny_model_dir, tiny_sst_dir, steps=4, eval_every=2, prefix_cache=False)
    ws = prepare_workspace(cfgs[0], backbone=backbone_from_config(tiny_configs()[family], seed=1))
    for f, cfg in zip(train_group(cfgs, ws), cfgs, strict=True):
        assert_same(f, train_experiment(cfg, ws))


def test_member_with_nan_loss_fails_alone(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    cfgs = members(tiny_model_dir, tiny_sst_dir, steps=6, eval_every=3, prefix_cache=False)
    cfgs[1].train.lr = 1e30
    ws = prepare_workspace(cfgs[0])
    fused = train_group(cfgs, ws)
    assert fused[1].status == "ERROR" and "loss became nan" in (fused[1].error or "")
    for i in (0, 2):
        alone = train_experiment(cfgs[i], ws)
        assert fused[i].status == alone.status in ("TERMINATED", "COLLAPSED")
        assert_same(fused[i], alone)


def test_members_leave_at_their_own_steps_or_when_stopped(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    cfgs = members(tiny_model_dir, tiny_sst_dir, steps=8, eval_every=2)
    cfgs[0].train.steps = 4  # leaves the batch half way
    ws = prepare_workspace(cfgs[0])
    seen: list[tuple[int, int]] = []

    def on_eval(member: int, record: dict, state: dict, cfg: ExperimentConfig) -> bool:
        seen.append((member, record["step"]))
        return member == 1 and record["step"] == 4  # a scheduler stops member 1 at step 4

    fused = train_group(cfgs, ws, on_eval)
    assert [f.status for f in fused] == ["TERMINATED", "STOPPED", "TERMINATED"]
    assert [s for m, s in seen if m == 0] == [2, 4]
    assert [s for m, s in seen if m == 1] == [2, 4]
    assert [s for m, s in seen if m == 2] == [2, 4, 6, 8]
    assert_same(fused[0], train_experiment(cfgs[0], ws))
    assert_same(fused[2], train_experiment(cfgs[2], ws))  # unaffected by its neighbours leaving


def test_probe_member_and_cache_in_a_group(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    cfgs = [
        experiment(tiny_model_dir, tiny_sst_dir, ProbeConfig(), lr=1e-2, seed=4),
        experiment(tiny_model_dir, tiny_sst_dir, LateConfig(layer=2, length=2, bottleneck=8, dropout=0.0), seed=5),
        experiment(tiny_model_dir, tiny_sst_dir, DeepConfig(layers=(3,), length=3), lr=2e-2, seed=6),
    ]
    ws = prepare_workspace(cfgs[0])
    fused = train_group(cfgs, ws)  # the cache holds the states entering block 2, the group's lowest prompt
    assert fused[0].metrics["prefix_cache"]["layer"] == 2
    for f, cfg in zip(fused, cfgs, strict=True):
        cfg.train.prefix_cache = False
        assert_same(f, train_experiment(cfg, ws))


def test_members_that_cannot_share_a_batch_are_refused(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    cfgs = members(tiny_model_dir, tiny_sst_dir)
    cfgs[2].train.batch_size = 4
    with pytest.raises(ConfigError, match="partition them first"):
        train_group(cfgs, prepare_workspace(cfgs[0]))


def test_partition_groups_by_key_then_first_layer_and_length(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    from autoprompt_search.backbones import BackboneInfo
    from autoprompt_search.methods import SptConfig
    from autoprompt_search.training.fused import partition

    cfgs = [
        experiment(tiny_model_dir, tiny_sst_dir, LateConfig(layer=3, length=2)),  # 0
        experiment(tiny_model_dir, tiny_sst_dir, DeepConfig(layers=(0, 2), length=8)),  # 1
        experiment(tiny_model_dir, tiny_sst_dir, DeepConfig(layers=(0,), length=2)),  # 2
        experiment(tiny_model_dir, tiny_sst_dir, LateConfig(layer=3, length=5), batch_size=4),  # 3: other key
        experiment(tiny_model_dir, tiny_sst_dir, ProbeConfig()),  # 4
        experiment(tiny_model_dir, tiny_sst_dir, SptConfig(search=True)),  # 5: its own loop
        experiment(tiny_model_dir, tiny_sst_dir, LateConfig(layer=1, length=2)),  # 6
    ]
    info = BackboneInfo.of(prepare_workspace(cfgs[0]).backbone)
    assert partition(cfgs, info, 1) == [[i] for i in range(7)]
    # With 4 text tokens per row, an 8-slot prompt (12 tokens) is 3x a 2-slot one (6): not fused.
    assert partition(cfgs, info, 2, text_tokens=4.0) == [[0], [1], [2], [3], [4], [5], [6]]
    # With 40, padding 2 slots to 8 costs 14%: groups share a first prompted layer (0: 2 then 1 by
    # length; 1: 6; 3: 0; 4: the probe), other batch sizes (3) and SPT searches (5) stay alone.
    assert partition(cfgs, info, 2, text_tokens=40.0) == [[0], [2, 1], [3], [4], [5], [6]]


def ddp_members(model_dir: str, data_dir: str) -> list[ExperimentConfig]:
    """The three members, the first leaving after 3 of 6 steps (its parameters unused from step 4)."""
    cfgs = members(model_dir, data_dir, steps=6, eval_every=3, prefix_cache=False)
    cfgs[0].train.steps = 3
    return cfgs


def _rank_trains(rank: int, model_dir: str, data_dir: str, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        cfgs = ddp_members(model_dir, data_dir)
        results = train_group(cfgs, prepare_workspace(cfgs[0]))
        if rank == 0:
            torch.save([(r.status, r.best_state, r.history) for r in results], out)
    finally:
        dist.destroy_process_group()


def test_two_ddp_ranks_train_a_group_as_one_process_does(tiny_model_dir: str, tiny_sst_dir: str, tmp_path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_rank_trains, args=(tiny_model_dir, tiny_sst_dir, port, out), nprocs=2)
    cfgs = ddp_members(tiny_model_dir, tiny_sst_dir)
    alone = train_group(cfgs, prepare_workspace(cfgs[0]))
    for (status, state, history), one in zip(torch.load(out), alone, strict=True):
        assert status == one.status in ("TERMINATED", "COLLAPSED")
        for name, value in one.best_state.items():
            torch.testing.assert_close(state[name], value, rtol=1e-4, atol=1e-5)
        assert [h["eval_score"] for h in history] == [h["eval_score"] for h in one.history]
        # The reported training loss is the whole batch's, not rank 0's share.
        assert [h["train_loss"] for h in history] == pytest.approx([h["train_loss"] for h in one.history], rel=1e-5)


class Crash(Exception):
    pass


def test_a_run_resumed_from_its_training_state_ends_as_if_never_stopped(
    tiny_model_dir: str, tiny_sst_dir: str, tmp_path
) -> None:
    from autoprompt_search.storage.checkpoint import load_training_state, save_training_state

    cfgs = members(tiny_model_dir, tiny_sst_dir, steps=8, eval_every=2, prefix_cache=False, warmup_ratio=0.25)
    ws = prepare_workspace(cfgs[0])
    whole = train_group(cfgs, ws)
    saved: dict[int, object] = {}

    def crash_at_step_4(member: int, record: dict, state: dict, cfg: ExperimentConfig) -> bool:
        if record["step"] == 4:
            save_training_state(record["training_state"](), tmp_path / str(member))  # a checkpoint on disk
            saved[member] = True
            if len(saved) == len(cfgs):
                raise Crash  # the worker dies after its step-4 checkpoints
        return False

    with pytest.raises(Crash):
        train_group(cfgs, ws, crash_at_step_4)
    resume = {i: load_training_state(tmp_path / str(i)) for i in range(len(cfgs))}
    resumed = train_group(cfgs, ws, resume=resume)  # type: ignore[arg-type]
    for again, first in zip(resumed, whole, strict=True):
        assert again.status == "TERMINATED"
        assert_same(again, first)
        assert [h["step"] for h in again.history] == [2, 4, 6, 8]
    # One configuration alone through train_experiment(), resumed the same way.
    alone = train_experiment(cfgs[2], ws, resume=load_training_state(tmp_path / "2"))
    assert_same(alone, whole[2])


def test_a_dynamic_prompting_member_trains_fused_as_alone(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    """DP mixes every arrangement's input embeddings on its own rows inside the group (its Gumbel
    samples come from the global generator, which the deep member does not draw from)."""
    from autoprompt_search.methods import DpConfig

    dp = DpConfig(length=3, pool=2, level="task", choose=("position", "length", "pool"))
    cfgs = [
        experiment(tiny_model_dir, tiny_sst_dir, dp, lr=5e-2, seed=1, steps=6, eval_every=3, prefix_cache=False),
        experiment(tiny_model_dir, tiny_sst_dir, DeepConfig(layers=(1,), length=2), lr=1e-1, seed=1, steps=6,
                   eval_every=3, prefix_cache=False),
    ]  # fmt: skip
    ws = prepare_workspace(cfgs[0])
    fused = train_group(cfgs, ws)
    for f, cfg in zip(fused, cfgs, strict=True):
        assert_same(f, train_experiment(cfg, ws))


def test_members_with_dropout_train_fused_as_alone(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    """Prompt, generator and classifier-input dropout draw from each member's own seeded stream
    (methods/noise.py), so with that dropout on a member trains fused exactly as alone (the same
    float tolerance as without). Not covered, and not exact: the backbone's own dropout inside
    prompted blocks (off in the tiny test model; 0.1 in BERT-style models) draws from torch's
    global stream over the whole fused batch, so a member's masks there differ from alone's."""
    from autoprompt_search.engine.heads import HeadConfig

    cfgs = [
        experiment(tiny_model_dir, tiny_sst_dir, DeepConfig(layers=(0, 2), length=3, dropout=0.2), lr=1e-1, seed=1,
                   steps=6, eval_every=3, prefix_cache=False),
        experiment(tiny_model_dir, tiny_sst_dir, LateConfig(layer=2, length=3, bottleneck=8, dropout=0.3), lr=5e-3,
                   seed=2, steps=6, eval_every=3, prefix_cache=False),
    ]  # fmt: skip
    for cfg in cfgs:
        cfg.head = HeadConfig(dropout=0.3)
    ws = prepare_workspace(cfgs[0])
    assert build_model(cfgs[0], ws).head.dropout.p == 0.3
    for f, cfg in zip(train_group(cfgs, ws), cfgs, strict=True):
        assert_same(f, train_experiment(cfg, ws))


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_lora_members_with_dropout_train_fused_as_alone(tiny_model_dir: str, tiny_sst_dir: str, family: str) -> None:
    """LoRA members of different ranks, targets, layer sets and rates, beside a kv member, with LoRA
    dropout on: the training loop gives each fused what it gives alone (GPT-2: fused QKV column blocks)."""
    from autoprompt_search.methods.lora import LoraConfig

    common = dict(steps=6, eval_every=3, prefix_cache=False)
    cfgs = [
        experiment(tiny_model_dir, tiny_sst_dir, LoraConfig(layers=(0, 2), rank=2, dropout=0.2), lr=1e-2, seed=1, **common),
        experiment(tiny_model_dir, tiny_sst_dir, LoraConfig(layers=(0, 1, 3), targets="all", rank=6, alpha=4.0, dropout=0.1),
                   lr=3e-3, seed=2, **common),
        experiment(tiny_model_dir, tiny_sst_dir, DeepConfig(layers=(0, 3), length=3, form="kv"), lr=3e-2, seed=3, **common),
    ]  # fmt: skip
    ws = prepare_workspace(cfgs[0], backbone=backbone_from_config(tiny_configs()[family], seed=1))
    for f, cfg in zip(train_group(cfgs, ws), cfgs, strict=True):
        assert_same(f, train_experiment(cfg, ws))
