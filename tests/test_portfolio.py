"""The portfolio: configurations learnt on other tasks, tried first; never one learnt on the task
under evaluation."""

from __future__ import annotations

import pytest

from autoprompt_search.study.portfolio import portfolio_for, read_portfolio, scaled_layers
from autoprompt_search.study.preflight import check_study
from autoprompt_search.study.space import SearchSpace

ALL = SearchSpace.load("all").sampler(num_layers=6)


def entry(task: str, lr: float, layers: list[int]) -> dict:
    config = {"method": {"name": "deep", "form": "kv", "layers": layers, "length": 20}, "train": {"lr": lr}}
    return {"task": task, "num_layers": 6, "dev_median": 0.9, "source": "x", "config": config}


def test_a_study_never_tries_what_was_learnt_on_its_own_task() -> None:
    entries = [entry("trec", 0.05, [1, 2]), entry("sst2", 0.01, [0, 1, 2, 3, 4, 5]), entry("trec", 0.02, [3])]
    for task in ("trec", "sst2", "rte"):
        chosen = portfolio_for(task, ALL, entries)
        learnt_here = [e["config"] for e in entries if e["task"] == task]
        assert chosen and not any(c in learnt_here for c in chosen), task
    assert len(portfolio_for("rte", ALL, entries, limit=2)) == 2
    # The shipped portfolio, as the study reads it: one learnt on the task itself is never chosen.
    shipped = read_portfolio()
    assert {e["task"] for e in shipped} <= {"sst2", "trec"}
    for task in ("sst2", "trec"):
        own = [e["config"] for e in shipped if e["task"] == task]
        assert not any(c in own for c in portfolio_for(task, ALL))


def test_entries_the_space_cannot_draw_are_left_out_and_layers_scale_with_depth() -> None:
    hidden_only = SearchSpace.from_dict({"methods": {"deep": {"length": {"type": "int", "low": 2, "high": 64}}},
                                         "train": {"lr": {"type": "float", "low": 1e-3, "high": 0.1}}})  # fmt: skip
    assert portfolio_for("rte", hidden_only.sampler(6), [entry("trec", 0.05, [1, 2])]) == []  # kv: not in it
    assert scaled_layers({"layers": [0, 3, 5]}, 6, 12) == {"layers": [0, 6, 10]}
    assert scaled_layers({"layer": 1}, 12, 6) == {"layer": 1}  # an LPT generator never enters at block 0


@pytest.mark.parametrize("enabled", [True, False])
def test_a_study_enqueues_the_portfolio_unless_told_not_to(
    tiny_model_dir: str, tiny_sst_dir: str, enabled: bool
) -> None:
    from conftest import tiny_experiment

    from autoprompt_search.study.options import StudyOptions

    opts = StudyOptions(name="p", space=_all_space(),
                        experiment=tiny_experiment(tiny_model_dir, tiny_sst_dir), portfolio=enabled)  # fmt: skip
    checked = check_study(opts)
    assert bool(checked.portfolio) == enabled  # an sst2 study: TREC's configurations, scaled to 4 layers
    assert all(c["method"]["layers"] != [0, 1, 2, 3, 4, 5] for c in checked.portfolio)


def _all_space() -> dict:
    import yaml

    from search_spaces import shipped

    return yaml.safe_load(shipped()["all"].read_text())
