"""Learned selection: SPT gates with the bi-level (DARTS) search, and Gumbel dynamic prompting."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES
from test_engine import ATOL, full_batch, make
from test_training import experiment

from autoprompt_search.errors import ConfigError
from autoprompt_search.methods import DeepConfig, DpConfig, LateConfig, SptConfig, method_config
from autoprompt_search.methods.spt_search import BilevelSearch, split_rows
from autoprompt_search.storage.checkpoint import load_run, predict_run, save_run
from autoprompt_search.training.loop import train_experiment
from autoprompt_search.training.workspace import prepare_workspace

# ---- SPT --------------------------------------------------------------------------------


def set_gates(model, probs: list[float]) -> None:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        model.method.gate_logits.copy_(torch.logit(torch.tensor(probs)))


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_spt_without_search_at_one_layer_equals_lpt(family: str) -> None:
    lpt = make(family, LateConfig(layer=2, length=3, bottleneck=8, dropout=0.0))
    spt = make(family, SptConfig(layers=(2,), search=False, length=3, bottleneck=8, dropout=0.0))
    spt.method.generators[0].load_state_dict(lpt.method.generator.state_dict())
    spt.head.load_state_dict(lpt.head.state_dict())
    batch = full_batch()
    batch.text_mask[0, 4:] = False
    torch.testing.assert_close(spt(batch), lpt(batch), atol=ATOL, rtol=0)


def test_spt_gates_interpolate_between_injecting_and_propagating() -> None:
    """A closed gate keeps the propagated prompt (= no prompt at that layer); an open one injects."""
    model = make("bert", SptConfig(layers=(1, 2), length=3, bottleneck=8, dropout=0.0))
    only_1 = make("bert", SptConfig(layers=(1,), search=False, length=3, bottleneck=8, dropout=0.0))
    only_1.method.generators[0].load_state_dict(model.method.generators[0].state_dict())
    only_1.head.load_state_dict(model.head.state_dict())
    set_gates(model, [1.0, 0.0])  # logit(1) = inf: exactly open / exactly closed
    batch = full_batch()
    torch.testing.assert_close(model(batch), only_1(batch), atol=ATOL, rtol=0)


def test_derived_layer_set_matches_the_gates() -> None:
    model = make("bert", SptConfig(length=2, bottleneck=4))  # candidates: blocks 1-3 (none at 0)
    set_gates(model, [0.9, 0.6, 0.4])
    assert model.method.derive_layers() == (1, 2)  # top half by default
    model.method.config.top_k = 3
    assert model.method.derive_layers() == (1, 2, 3)
    model.method.config.derive = "threshold"
    assert model.method.derive_layers() == (1, 2)
    model.method.config.threshold = 0.95
    assert model.method.derive_layers() == (1,)  # nothing passes: the best gate is kept
    model.method.config.retrain = "deep"
    assert model.method.derived_config() == DeepConfig(layers=(1,), length=2)


def test_gate_logits_get_gradients_only_in_the_architecture_step(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    cfg = experiment(tiny_model_dir, tiny_sst_dir, SptConfig(length=2, bottleneck=8, budget=1.0))
    search = BilevelSearch(cfg, prepare_workspace(cfg))
    gates = search.method.gate_logits
    weights_before = [p.detach().clone() for p in search.weights]
    gates_before = gates.detach().clone()
    batch = search.batch(next(search.weight_batches))

    search.weight_step(batch)
    assert gates.grad is None and torch.equal(gates, gates_before)
    assert all(not torch.equal(a, b) for a, b in zip(weights_before, search.weights, strict=True) if b.numel() > 1)

    weights_before = [p.detach().clone() for p in search.weights]
    search.arch_step(search.batch(next(search.arch_batches)), batch)
    assert not torch.equal(gates, gates_before)
    assert all(torch.equal(a, b) for a, b in zip(weights_before, search.weights, strict=True))
    assert all(p.grad is None for p in search.weights)


def test_second_order_arch_step_restores_weights_and_moves_gates(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    cfg = experiment(tiny_model_dir, tiny_sst_dir, SptConfig(length=2, bottleneck=8, second_order=True))
    search = BilevelSearch(cfg, prepare_workspace(cfg))
    weights_before = [p.detach().clone() for p in search.weights]
    gates_before = search.method.gate_logits.detach().clone()
    search.arch_step(search.batch(next(search.arch_batches)), search.batch(next(search.weight_batches)))
    assert all(torch.equal(a, b) for a, b in zip(weights_before, search.weights, strict=True))
    assert not torch.equal(gates_before, search.method.gate_logits)


def test_budget_pushes_the_expected_number_of_layers_down(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    spt = SptConfig(length=2, bottleneck=8, budget=1.0, budget_weight=50.0, gate_init=2.0, arch_lr=0.2)
    cfg = experiment(tiny_model_dir, tiny_sst_dir, spt, steps=10, eval_every=5)
    result = BilevelSearch(cfg, prepare_workspace(cfg)).run()
    assert result.history[0]["expected_layers"] < 3 * torch.sigmoid(torch.tensor(2.0)).item()  # candidates 1..3
    assert result.history[-1]["expected_layers"] < result.history[0]["expected_layers"]
    assert [len(h["gate_probs"]) for h in result.history] == [3, 3]
    # The control: the same search without a budget keeps more layers open.
    free = SptConfig(length=2, bottleneck=8, budget=0.0, gate_init=2.0, arch_lr=0.2)
    cfg = experiment(tiny_model_dir, tiny_sst_dir, free, steps=10, eval_every=5)
    control = BilevelSearch(cfg, prepare_workspace(cfg)).run()
    assert control.history[-1]["expected_layers"] > result.history[-1]["expected_layers"] + 0.5


def test_gate_search_reads_the_frozen_blocks_from_the_prefix_cache(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    # Candidates 1..3: block 0 never sees a prompt, so the search reads its output from the cache
    # (as the training loop does) and finds what it finds without the cache.
    spt = SptConfig(length=2, bottleneck=8, arch_lr=0.2)
    runs, searches = {}, {}
    for cache in (True, False):
        cfg = experiment(tiny_model_dir, tiny_sst_dir, spt, steps=6, eval_every=3, prefix_cache=cache)
        searches[cache] = BilevelSearch(cfg, prepare_workspace(cfg))
        runs[cache] = searches[cache].run()
    cached, plain = runs[True], runs[False]
    assert cached.prefix_cache is not None and plain.prefix_cache is None
    assert set(searches[True].feeder.stores) == {"train", "dev"}  # both losses' batches, not only evaluation
    assert cached.prefix_cache["layer"] == 1 and cached.prefix_cache["hits"] > 0
    assert cached.probabilities == pytest.approx(plain.probabilities, abs=1e-5)
    assert [h["eval_score"] for h in cached.history] == [h["eval_score"] for h in plain.history]
    assert cached.probabilities != pytest.approx([torch.sigmoid(torch.tensor(0.0)).item()] * 3, abs=1e-4)


def test_weight_and_architecture_rows_are_disjoint() -> None:
    w, a = split_rows(10, 0.3, seed=1)
    assert len(a) == 3 and len(w) == 7 and not set(w.tolist()) & set(a.tolist())
    with pytest.raises(ConfigError, match="at least 2"):
        split_rows(1, 0.5, seed=1)


def test_spt_darts_end_to_end_retrains_the_derived_layers(tiny_model_dir: str, tiny_sst_dir: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    spt = SptConfig(length=2, bottleneck=8, top_k=2, search_steps=4)
    cfg = experiment(tiny_model_dir, tiny_sst_dir, spt)
    ws = prepare_workspace(cfg)
    seen: list[object] = []
    result = train_experiment(cfg, ws, on_eval=lambda record, state, trained: seen.append(trained.method))
    search = result.metrics["spt_search"]
    probs = torch.tensor(search["gate_probs"])
    candidates = spt.candidates(4)  # (1, 2, 3): the gate probabilities are over these
    assert search["derived_layers"] == sorted(candidates[i] for i in torch.topk(probs, 2).indices.tolist())
    assert result.config.method == SptConfig(
        layers=tuple(search["derived_layers"]), search=False, length=2, bottleneck=8
    )
    assert seen and all(m == result.config.method for m in seen)  # reports carry the retrained config
    assert len(search["history"]) >= 1 and result.metrics["steps_total"] == 4 + cfg.train.steps
    # The exported run is an ordinary fixed-layer SPT run: it reloads and predicts.
    save_run(result, tmp_path / "run")
    model, loaded, _ = load_run(tmp_path / "run", device="cpu")
    assert loaded.method == result.config.method and model.method.gate_logits is None
    metrics, _ = predict_run(tmp_path / "run", "dev", device="cpu")
    assert metrics["score"] == pytest.approx(result.metrics["dev"]["score"], abs=1e-6)


def _rank_searches(rank: int, model_dir: str, data_dir: str, port: int, out: str) -> None:
    """One of two gloo ranks: an SPT-DARTS run whose gate search derives other layers on rank 1
    (as a nondeterministic kernel could tip a gate there)."""
    import torch.distributed as dist

    from autoprompt_search.methods import spt_search as darts

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        search_run = darts.BilevelSearch.run

        def run(self):  # type: ignore[no-untyped-def]
            found = search_run(self)
            if rank == 1:
                found.derived = SptConfig(layers=(1,), search=False, length=2, bottleneck=8)
            return found

        darts.BilevelSearch.run = run  # type: ignore[method-assign]
        cfg = experiment(model_dir, data_dir, SptConfig(length=2, bottleneck=8, top_k=2, search_steps=4))
        result = train_experiment(cfg, prepare_workspace(cfg))
        assert isinstance(result.config.method, SptConfig)
        torch.save((list(result.config.method.layers), result.best_state), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_every_rank_retrains_rank_zeros_derived_layers(tiny_model_dir: str, tiny_sst_dir: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "rank")
    mp.spawn(_rank_searches, args=(tiny_model_dir, tiny_sst_dir, port, out), nprocs=2)
    (layers0, state0), (layers1, state1) = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    assert layers0 == layers1 and len(layers0) == 2  # rank 0's top-2, not rank 1's [1]
    for name, value in state0.items():
        torch.testing.assert_close(state1[name], value)  # one model, trained under DDP


def _gate_search_config(model_dir: str, data_dir: str, second_order: bool):  # type: ignore[no-untyped-def]
    # No dropout: each rank draws its own masks for its share, one process draws them for the batch.
    spt = SptConfig(length=2, bottleneck=8, search_steps=6, dropout=0.0, second_order=second_order)
    return experiment(model_dir, data_dir, spt, batch_size=8, eval_every=3, prefix_cache=False)


def _rank_gate_search(rank: int, model_dir: str, data_dir: str, port: int, out: str, second_order: bool) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        cfg = _gate_search_config(model_dir, data_dir, second_order)
        search = BilevelSearch(cfg, prepare_workspace(cfg))
        rows: list = []
        search.fetch["train"] = lambda batch_rows, fetch=search.fetch["train"]: (
            rows.append(len(batch_rows)) or fetch(batch_rows)
        )
        found = search.run()
        torch.save((found.probabilities, [h["train_loss"] for h in found.history], rows), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("second_order", [False, True])
def test_two_ranks_split_the_gate_search_and_find_what_one_process_finds(
    tiny_model_dir: str, tiny_sst_dir: str, tmp_path, second_order: bool
) -> None:  # type: ignore[no-untyped-def]
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "rank")
    mp.spawn(_rank_gate_search, args=(tiny_model_dir, tiny_sst_dir, port, out, second_order), nprocs=2)
    cfg = _gate_search_config(tiny_model_dir, tiny_sst_dir, second_order)
    alone = BilevelSearch(cfg, prepare_workspace(cfg)).run()
    for rank in (0, 1):
        probabilities, losses, rows = torch.load(f"{out}.{rank}")
        assert set(rows) == {4}  # each rank trains on half of every batch of 8
        assert probabilities == pytest.approx(alone.probabilities, abs=1e-5)  # the same gates
        assert losses == pytest.approx([h["train_loss"] for h in alone.history], rel=1e-4)  # the whole batch's


def test_a_resumed_spt_darts_run_continues_its_derived_layers_without_searching_again(
    tiny_model_dir: str, tiny_sst_dir: str, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    import ray.train

    from autoprompt_search.storage.checkpoint import save_state, save_training_state
    from autoprompt_search.study.trial import resume_point

    class Crash(Exception):
        pass

    # No dropout: its random stream is not part of a TrainingState (see trainer.TrainingState).
    spt = SptConfig(length=2, bottleneck=8, top_k=2, search_steps=4, dropout=0.0)
    cfg = experiment(tiny_model_dir, tiny_sst_dir, spt, steps=8, eval_every=2, prefix_cache=False)
    ws = prepare_workspace(cfg)
    whole = train_experiment(cfg, ws)

    def crash_at_step_4(record: dict, state: dict, trained: object) -> bool:
        if record["step"] == 4:  # the checkpoint a study trial writes, then the worker dies
            directory = tmp_path / "checkpoint_000001"
            save_state(state, trained, directory, {"dev_score": record["best_score"], "step": 4}, [])  # type: ignore[arg-type]
            save_training_state(record["training_state"](), directory)
            raise Crash
        return False

    with pytest.raises(Crash):
        train_experiment(cfg, ws, on_eval=crash_at_step_4)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)  # a Tune-level restart: found on disk
    trained, state = resume_point(cfg, tmp_path)
    assert state is not None and trained.method == whole.config.method  # the derived layers, search off
    monkeypatch.setattr(BilevelSearch, "run", lambda *_: pytest.fail("the gate search ran again"))
    resumed = train_experiment(trained, ws, resume=state)

    # the search's record comes back from the checkpoint: the same search as the uninterrupted run's
    def timeless(search: dict) -> dict:
        return {k: v for k, v in search.items() if k != "search_seconds"}

    assert timeless(resumed.metrics["spt_search"]) == timeless(whole.metrics["spt_search"])
    assert resumed.metrics["steps_total"] == whole.metrics["steps_total"] == 4 + 8
    assert [h["step"] for h in resumed.history] == [2, 4, 6, 8]
    assert [h["eval_score"] for h in resumed.history] == [h["eval_score"] for h in whole.history]
    for name, value in whole.best_state.items():
        torch.testing.assert_close(resumed.best_state[name], value, rtol=1e-4, atol=1e-5)


def test_spt_config_errors() -> None:
    with pytest.raises(ConfigError, match="method.gate: 'hard' unknown"):
        method_config("spt", {"gate": "hard"})
    with pytest.raises(ConfigError, match="give the prompted layers"):
        method_config("spt", {"search": False})
    model_info = make("bert", None).backbone
    from autoprompt_search.backbones import BackboneInfo

    with pytest.raises(ConfigError, match="top_k: 9 exceeds the 3 candidate layers"):
        method_config("spt", {"top_k": 9}).check(BackboneInfo.of(model_info))


# ---- dynamic prompting --------------------------------------------------------------------


def fix_task_choice(model, choice: str, index: int) -> None:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        logits = model.method.logits[choice]
        logits.fill_(-10.0)
        logits[index] = 10.0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("j", [0, 2, 4])
def test_task_level_dp_with_a_fixed_position_equals_deep_with_that_position(family: str, j: int) -> None:
    dp = make(family, DpConfig(length=4, pool=1, level="task", choose=("position",)))
    position = {"position": "split", "split_at": j} if j else {}
    deep = make(family, DeepConfig(layers=(0,), length=4, **position))
    with torch.no_grad():
        deep.method.prompts.copy_(dp.method.prompts)
    deep.head.load_state_dict(dp.head.state_dict())
    fix_task_choice(dp, "position", j)
    batch = full_batch()
    batch.text_mask[1, 4:] = False
    torch.testing.assert_close(dp(batch), deep(batch), atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_dropped_prompt_tokens_cannot_change_the_output(family: str) -> None:
    model = make(family, DpConfig(length=5, pool=1, level="task", choose=("length", "position")))
    fix_task_choice(model, "length", 2)  # keep P[:2]
    fix_task_choice(model, "position", 1)  # P[1:2] before the input, P[:1] after it
    batch = full_batch()
    before = model(batch)
    assert model.method.choices.length.tolist() == [2, 2]
    with torch.no_grad():
        model.method.prompts[:, 2:] = torch.randn_like(model.method.prompts[:, 2:]) * 100
    torch.testing.assert_close(model(batch), before, atol=ATOL, rtol=0)
    with torch.no_grad():
        model.method.prompts[:, 1] += torch.randn_like(model.method.prompts[:, 1])  # a kept token does change it
    assert not torch.allclose(model(batch), before, atol=1e-4)


def test_hard_samples_are_one_hot_and_carry_gradients() -> None:
    model = make("bert", DpConfig(length=4, pool=3, level="instance")).train()
    method = model.method
    ctx_logits = torch.randn(6, 5, requires_grad=True)
    y = method.one_hot(ctx_logits)
    assert set(y.unique().tolist()) <= {0.0, 1.0} and torch.equal(y.sum(-1), torch.ones(6))
    batch = full_batch(b=6)
    model(batch).sum().backward()
    for name in ("position", "length", "pool"):
        assert method.selectors[name].weight.grad is not None and method.selectors[name].weight.grad.abs().sum() > 0
    assert method.prompts.grad.abs().sum() > 0
    c = method.choices
    assert torch.equal(c.scale.detach(), torch.ones(6)) and torch.allclose(c.weights.sum(-1), torch.ones(6))


def test_untrained_dp_keeps_the_whole_prompt() -> None:
    for level in ("task", "instance"):
        model = make("bert", DpConfig(length=4, pool=1, level=level, choose=("length",)))
        model(full_batch(b=3))
        assert model.method.choices.length.tolist() == [4, 4, 4], level


def test_dp_eval_is_deterministic_and_temperature_anneals() -> None:
    model = make("bert", DpConfig(length=4, tau=2.0, tau_min=0.5, anneal=0.01))
    batch = full_batch(b=4)
    torch.testing.assert_close(model(batch), model(batch), atol=0, rtol=0)
    model.method.on_step(100, 200)  # a fixed per-step rate ignores the budget
    assert model.method.tau == pytest.approx(2.0 * torch.exp(torch.tensor(-1.0)).item())
    model.method.on_step(10_000, 20_000)
    assert model.method.tau == 0.5


def test_dp_temperature_anneals_over_the_budget() -> None:
    model = make("bert", DpConfig(length=4, tau=2.0, tau_min=0.5, anneal_until=0.5))
    for steps in (100, 10_000):
        model.method.on_step(steps // 4, steps)  # halfway to tau_min: 2.0 -> 1.0
        assert model.method.tau == pytest.approx(1.0), steps
        model.method.on_step(steps // 2, steps)
        assert model.method.tau == pytest.approx(0.5), steps


@pytest.mark.parametrize("family", ["bert", "roberta", "mpnet", "gpt2"])
def test_dp_loss_has_a_gradient_for_every_options_weight(family: str) -> None:
    """The one-hot sample y mixes every arrangement, so each option's y_j (not only the chosen
    one's) gets the first-order effect of its arrangement."""
    model = make(family, DpConfig(length=3, pool=1, level="task", choose=("position", "length"))).train()
    batch = full_batch(b=4)
    logits = model(batch)
    c = model.method.choices
    c.position_y.retain_grad()
    c.length_y.retain_grad()
    logits.square().sum().backward()
    for name, y in (("position", c.position_y), ("length", c.length_y)):
        per_option = y.grad.abs().sum(0)  # (L+1,)
        assert bool((per_option > 0).all()), (name, per_option)
        chosen = y.argmax(-1)
        others = y.grad.clone()
        others[torch.arange(4), chosen] = 0
        assert others.abs().sum() > 0, name  # the options not taken are compared too
    assert model.method.logits["position"].grad.abs().sum() > 0
    assert model.method.logits["length"].grad.abs().sum() > 0


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_dp_mixture_forward_equals_the_chosen_arrangement(family: str) -> None:
    model = make(family, DpConfig(length=4, pool=1, level="task", choose=("position", "length")))
    fix_task_choice(model, "position", 3)
    fix_task_choice(model, "length", 2)
    batch = full_batch()
    expected = model.eval()(batch)
    torch.testing.assert_close(model.train()(batch), expected, atol=ATOL, rtol=0)  # the mixed input, in training


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_dp_mixed_input_is_one_dropout_sample_of_the_chosen_arrangement(family: str) -> None:
    """With embedding dropout on, every option shares the chosen arrangement's mask: the training
    input is that arrangement's embeddings times one mask (0 or 1/(1-p) per element). With a fresh
    mask per option it held elements at -1x and 2x."""
    from conftest import tiny_configs

    from autoprompt_search.backbones import BackboneInfo, backbone_from_config
    from autoprompt_search.engine.heads import ClassifierHead
    from autoprompt_search.engine.model import PromptedModel
    from autoprompt_search.methods import build_method

    p = 0.5
    config = tiny_configs()[family]
    config.update({"hidden_dropout_prob": p} if family == "bert" else {"embd_pdrop": p})
    bb = backbone_from_config(config, seed=0)
    method = build_method(DpConfig(length=4, pool=1, level="task", choose=("position", "length")), BackboneInfo.of(bb))
    method.init_parameters(bb.word_embeddings, torch.Generator().manual_seed(0))
    model = PromptedModel(bb, method, ClassifierHead(bb, 3, pooler=True)).train()
    fix_task_choice(model, "position", 3)
    fix_task_choice(model, "length", 2)
    seen = {}
    mix = method.embed_input

    def spy(embed, after):  # type: ignore[no-untyped-def]
        seen["mixed"] = mix(embed, after).detach()
        lower = bb.lower_modules
        for m in lower:
            m.eval()
        seen["clean"] = embed(after).detach()  # the chosen arrangement without dropout
        for m in lower:
            m.train()
        return seen["mixed"]

    method.embed_input = spy
    torch.manual_seed(0)
    model(full_batch(b=4, t=8))
    scaled, clean = seen["mixed"] * (1 - p), seen["clean"]
    dropped = scaled.abs() < 1e-6
    assert 0.3 < dropped.float().mean() < 0.7  # dropout was on
    torch.testing.assert_close(scaled[~dropped], clean[~dropped], atol=1e-5, rtol=1e-5)


def test_rotary_dp_position_falls_back_to_the_chosen_options_scale() -> None:
    """Llama's positions act inside attention: arrangements cannot be mixed at the input, the
    chosen prompt is scaled by its sample instead (documented in methods/dp.py)."""
    model = make("llama", DpConfig(length=3, pool=1, level="task", choose=("position",))).train()
    logits = model(full_batch(b=4))
    c = model.method.choices
    c.position_y.retain_grad()
    logits.square().sum().backward()
    grad = c.position_y.grad
    taken = grad[torch.arange(4), c.position]
    others = torch.ones_like(grad, dtype=torch.bool)
    others[torch.arange(4), c.position] = False
    assert taken.abs().sum() > 0 and grad[others].abs().max() == 0  # only the chosen option's weight
    assert model.method.logits["position"].grad.abs().sum() > 0


def test_dp_trains_and_reloads(tiny_model_dir: str, tiny_sst_dir: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = experiment(tiny_model_dir, tiny_sst_dir, DpConfig(length=3, pool=2))
    result = train_experiment(cfg, prepare_workspace(cfg))
    save_run(result, tmp_path / "run")
    metrics, _ = predict_run(tmp_path / "run", "dev", device="cpu")
    assert metrics["score"] == pytest.approx(result.metrics["dev"]["score"], abs=1e-6)


def test_dp_config_errors() -> None:
    with pytest.raises(ConfigError, match="method.pool: 4 prompt sets need 'pool'"):
        method_config("dp", {"choose": ["position"]})
    with pytest.raises(ConfigError, match="method.choose: 'width' unknown"):
        method_config("dp", {"choose": ["width"], "pool": 1})
    with pytest.raises(ConfigError, match="conflicts with choosing it"):
        method_config("dp", {"split_at": 2})


def test_task_level_dp_learns_the_only_position_that_answers() -> None:
    """benchmarks/dp_estimator.py: only j = L lets the model read the label; the mixing estimator
    finds it in 100 steps (the old chosen-option scaling picked j = 2 on every seed tried)."""
    from benchmarks.dp_estimator import PROMPT, train_position_task

    logits, accuracy = train_position_task(mixing=True, steps=100, seed=0)
    assert max(range(PROMPT + 1), key=lambda j: logits[j]) == PROMPT, logits
    assert accuracy > 0.9
