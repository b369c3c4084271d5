"""A study's trainable-parameter budget: counted on the driver without weights, equal to what the
built model trains; draws over it are never trained (PRUNED with their excess as a constraint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import tiny_experiment

from autoprompt_search.backbones import BackboneInfo, backbone_info
from autoprompt_search.config import DataConfig, ExperimentConfig, TrainConfig
from autoprompt_search.engine.heads import HeadConfig
from autoprompt_search.errors import ConfigError
from autoprompt_search.methods import DeepConfig, DpConfig, LateConfig, ProbeConfig, SptConfig
from autoprompt_search.methods.lora import LoraConfig
from autoprompt_search.study.budget import CONSTRAINT, ParamBudget, check_budget, param_budget
from autoprompt_search.study.group_search import GroupSearcher
from autoprompt_search.study.journal import journal_storage
from autoprompt_search.study.options import StudyOptions
from autoprompt_search.study.report import budget_note
from autoprompt_search.study.searcher import ResumableOptunaSearch
from autoprompt_search.study.space import SearchSpace
from autoprompt_search.training.workspace import build_model, count_trainable, prepare_workspace

METHODS = {
    "deep-hidden": DeepConfig(layers=(0, 2), length=4),
    "deep-kv-reparam": DeepConfig(layers=(1, 3), length=3, form="kv", reparam=8, dropout=0.1),
    "late": LateConfig(layer=2, length=3, bottleneck=8),
    "dp": DpConfig(length=4, pool=2),
    "spt": SptConfig(search=False, layers=(1, 3), length=2, bottleneck=8),
    "probe": ProbeConfig(),
    "lora": LoraConfig(layers=(1, 3), targets="query,ffn_in", rank=3),
}


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("head", ["classifier", "label_words"])
def test_the_driver_count_equals_what_the_built_model_trains(
    tiny_model_dir: str, tiny_sst_dir: str, name: str, head: str
) -> None:
    if head == "label_words" and name == "probe":
        pytest.skip("a probe trains only its classifier")
    cfg = ExperimentConfig(
        model=tiny_model_dir,
        data=DataConfig(task="sst2", data_dir=tiny_sst_dir, max_length=32),
        method=METHODS[name],
        head=HeadConfig(kind=head),
        train=TrainConfig(steps=2, device="cpu"),
    )
    ws = prepare_workspace(cfg)
    info = backbone_info(tiny_model_dir)  # the driver's: the model built on the meta device
    assert count_trainable(cfg, info, num_classes=2) == build_model(cfg, ws).num_trainable()


SPACE = {
    "methods": {"deep": {"layers": {"type": "layer_set", "depth": [0.0, 1.0], "max_layers": 4},
                         "length": {"type": "int", "low": 2, "high": 30}}},
}  # fmt: skip


def budget_for(limit: int) -> ParamBudget:
    base = {"model": "unused", "data": {"task": "sst2"}, "method": {"name": "deep"}}
    return ParamBudget(limit, base, BackboneInfo(num_layers=4, hidden_size=8, max_positions=128, causal=False), 2)


def held(storage: Path) -> list[Any]:
    return optuna.load_study(study_name="s", storage=journal_storage(storage)).trials


def test_draws_over_the_budget_are_pruned_and_never_handed_to_tune(tmp_path: Path) -> None:
    """Hidden deep prompts: 8 x length x layers + the head's 18; a limit of 300 admits about a
    third of the space. Each trial Tune gets fits; each draw over it is PRUNED in Optuna with its
    count and a positive constraint (what TPE ranks below every feasible trial)."""
    budget = budget_for(300)
    searcher = ResumableOptunaSearch(
        space=SearchSpace.from_dict(SPACE).sampler(num_layers=4), metric="dev_score", mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0), study_name="s",
        journal=str(tmp_path / "optuna.journal"), budget=budget,
    )  # fmt: skip
    configs = [searcher.suggest(f"t{i}") for i in range(6)]
    assert all(budget.count(c) <= 300 for c in configs)  # type: ignore[arg-type]
    trials = held(tmp_path / "optuna.journal")
    over = [t for t in trials if t.state.name == "PRUNED"]
    assert over, "the space draws over the budget: some draws must have been refused"
    assert all(t.user_attrs["trainable_params"] > 300 and t.constraints[CONSTRAINT] > 0 for t in over)
    assert not any("tune_trial_id" in t.user_attrs for t in over)  # no row of the table is theirs
    running = [t for t in trials if t.state.name == "RUNNING"]
    assert [t.user_attrs["tune_trial_id"] for t in running] == [f"t{i}" for i in range(6)]
    assert all(t.constraints[CONSTRAINT] <= 0 for t in running)
    # The study's report says how many draws the budget refused (they have no row in the table).
    note = budget_note(tmp_path, StudyOptions(name="s", max_trainable="300"))
    assert f"--max-trainable 300: {len(over)} draw(s) over it were refused" in note


def test_a_fused_searcher_keeps_its_members_within_the_budget(tmp_path: Path) -> None:
    budget = budget_for(300)
    searcher = GroupSearcher(
        SearchSpace.from_dict(SPACE).sampler(num_layers=4), optuna.samplers.RandomSampler(seed=0),
        str(tmp_path / "j"), "s", ["maximize"], ["dev_score"], 6, 3, "dev_score", "max", budget,
    )  # fmt: skip
    members = [m for i in range(2) for m in searcher.suggest(f"g{i}")["members"]]  # type: ignore[index]
    assert len(members) == 6 and all(budget.count(m) <= 300 for m in members)
    assert any(t.state.name == "PRUNED" and t.constraints[CONSTRAINT] > 0 for t in held(tmp_path / "j"))


def test_tpe_learns_where_the_budget_lies(tmp_path: Path) -> None:
    """Refused draws reach TPE as PRUNED without a score and with a violated constraint, both of
    which it ranks below every trained trial: after its random start it draws over the budget far
    less often than random search on the same space (told FAIL, TPE ignores them and never stops)."""

    def refused(sampler: Any, name: str) -> int:
        searcher = ResumableOptunaSearch(
            space=SearchSpace.from_dict(SPACE).sampler(num_layers=4), metric="dev_score", mode="max",
            sampler=sampler, study_name="s", journal=str(tmp_path / name), budget=budget_for(150),
        )  # fmt: skip
        for i in range(30):
            searcher.suggest(f"t{i}")
            searcher.on_trial_complete(f"t{i}", {"dev_score": 0.5 + i / 100, "trained_to_end": True})
        return sum(t.state.name == "PRUNED" for t in held(tmp_path / name))

    tpe = optuna.samplers.TPESampler(seed=0, n_startup_trials=5, multivariate=True, group=True)
    assert refused(tpe, "tpe") < refused(optuna.samplers.RandomSampler(seed=0), "random") / 2


def test_a_budget_is_checked_before_ray_starts(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    for bad in ("abc", "0", "0%", "150%", "1.5", "-3"):
        with pytest.raises(ConfigError, match=f"study.max_trainable: '{bad}' is not a budget"):
            StudyOptions(max_trainable=bad)
    experiment = {
        "model": tiny_model_dir,
        "data": {"task": "sst2", "data_dir": tiny_sst_dir},
        "method": {"name": "deep"},
    }
    options = StudyOptions(space=SPACE, experiment=experiment, max_trainable="10%")
    budget = param_budget(options, num_classes=2)
    assert budget is not None and budget.limit == budget.info.num_params // 10 > 0
    sampler = SearchSpace.from_dict(SPACE).sampler(num_layers=4)
    with pytest.raises(ConfigError, match="none of 200 random draws of the space fits 20 trainable parameters"):
        check_budget(budget_for(20), sampler, [], seed=0)
    big = {"method": {"name": "deep", "layers": [0, 1, 2, 3], "length": 30}, "train": {}}
    with pytest.raises(ConfigError, match=r"--enqueue #1: 978 trainable parameters exceed --max-trainable \(300\)"):
        check_budget(budget_for(300), sampler, [big], seed=0)
    check_budget(budget_for(300), sampler, [], seed=0)  # a reachable budget passes


@pytest.mark.ray
def test_a_study_with_a_budget_trains_only_configurations_within_it(
    local_ray: None, tiny_model_dir: str, tiny_sst_dir: str, tmp_path: Path
) -> None:
    """The whole path on a local Ray: the budget in study.json, every trained row within it (as the
    worker counts it), the refused draws in the Optuna journal and never in the table; the control,
    the same study without the budget, trains configurations over it."""
    from autoprompt_search.study.records import read_trials
    from autoprompt_search.study.runner import run_study

    space = {
        "methods": {
            "deep": {"layers": {"type": "layer_set", "depth": [0.0, 1.0], "max_layers": 2},
                     "length": {"type": "int", "low": 2, "high": 6}},
            "late": {"layer": {"type": "layer", "depth": [0.25, 0.75]}, "length": 2, "bottleneck": 8},
        },
    }  # fmt: skip
    experiment = tiny_experiment(tiny_model_dir, tiny_sst_dir, steps=4)
    options = StudyOptions(
        name="s", space=space, experiment=experiment, num_samples=4, max_concurrent=2, scheduler="fifo",
        sampler="random", max_trainable="250", finalists=0,
    )  # fmt: skip
    control = StudyOptions(**{**vars(options), "name": "control", "max_trainable": ""})
    run_study(options, tmp_path)
    run_study(control, tmp_path)  # the same study and sampler seed without the budget
    unbudgeted = read_trials(tmp_path / "control")
    assert len(unbudgeted) == 4 and max(r["trainable_params"] for r in unbudgeted) > 250, unbudgeted
    rows = read_trials(tmp_path / "s")
    assert len(rows) == 4 and all(0 < r["trainable_params"] <= 250 for r in rows)
    assert StudyOptions.load(tmp_path / "s").max_trainable == "250"
    trials = optuna.load_study(study_name="s", storage=journal_storage(tmp_path / "s" / "optuna.journal")).trials
    refused = [t for t in trials if t.state.name == "PRUNED"]
    assert refused and all(t.user_attrs["trainable_params"] > 250 for t in refused)
    assert len(trials) == 4 + len(refused)
