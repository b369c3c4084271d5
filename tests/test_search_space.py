"""Search-space files: validation reports every problem; sampling is tested without a study."""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest

from autoprompt_search.backbones import BackboneInfo
from autoprompt_search.config import ExperimentConfig
from autoprompt_search.errors import ConfigError
from autoprompt_search.study.space import SearchSpace, SearchSpaceError, depth_range

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"


@pytest.mark.parametrize("name", ["layers.yaml", "lpt.yaml", "all.yaml", "learned.yaml", "lora.yaml", "kv_lora.yaml"])
def test_shipped_spaces_validate_and_sample_valid_configs(name: str) -> None:
    from transformers import BertConfig

    from autoprompt_search.backbones import backbone_from_config

    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=6, num_attention_heads=4, intermediate_size=64)
    info = BackboneInfo.of(backbone_from_config(config))
    sampler = SearchSpace.load(SPACES / name).sampler(num_layers=6)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(15):
        trial = study.ask()
        overlay = sampler(trial)
        cfg = ExperimentConfig.from_dict(overlay)
        cfg.method.check(info)
        study.tell(trial, 0.5)
    pickle.dumps(sampler)  # Tune checkpoints the searcher by pickling it


def test_fixed_trial_gives_exactly_the_config() -> None:
    sampler = SearchSpace.load(SPACES / "all.yaml").sampler(num_layers=6)
    params = {"method": "deep", "deep.form": "hidden", "deep.length": 8, "deep.position": "split", "deep.split_at": 3}
    params |= {f"deep.layers.{i}": i in (1, 4) for i in range(6)} | {"train.lr": 0.01, "head.pooling": "mean"}
    out = sampler(optuna.trial.FixedTrial(params))
    assert out == {
        "method": {"name": "deep", "form": "hidden", "layers": [1, 4], "length": 8, "position": "split", "split_at": 3},
        "train": {"lr": 0.01, "steps": 300},
        "head": {"pooling": "mean"},
    }
    assert ExperimentConfig.from_dict(out).head.pooling == "mean"
    # A kv prefix sits before the text: no position or split is drawn for it.
    kv = sampler(optuna.trial.FixedTrial(params | {"deep.form": "kv"}))
    assert kv["method"] == {"name": "deep", "form": "kv", "layers": [1, 4], "length": 8}
    late = sampler(optuna.trial.FixedTrial({"method": "late", "late.layer": 3, "late.generator": "appg",
                                            "late.bottleneck": 64, "late.length": 5, "late.train.lr": 0.002,
                                            "head.pooling": "token"}))  # fmt: skip
    assert late["method"] == {"name": "late", "layer": 3, "generator": "appg", "bottleneck": 64, "length": 5}


@pytest.mark.parametrize("name", ["all.yaml", "lpt.yaml", "lpt_insertion.yaml"])
def test_shipped_spaces_never_sample_generator_layer_0(name: str) -> None:
    sampler = SearchSpace.load(SPACES / name).sampler(num_layers=6)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    layers = set()
    for _ in range(120):
        trial = study.ask()
        if sampler(trial)["method"]["name"] == "late":
            layers.add(trial.params["late.layer"])
            assert trial.distributions["late.layer"].low == 1
        study.tell(trial, 0.5)
    assert layers == {1, 2, 3, 4, 5}


def test_layer_set_respects_size_bounds_and_depth() -> None:
    space = SearchSpace.from_dict(
        {"methods": {"deep": {"layers": {"type": "layer_set", "depth": [0.5, 1.0], "min_layers": 2, "max_layers": 3}}}}
    )
    sampler = space.sampler(num_layers=12)
    none = sampler(optuna.trial.FixedTrial({f"deep.layers.{i}": False for i in range(6, 12)}))
    assert none["method"]["layers"] == [10, 11]  # repaired up to min_layers from the top
    every = sampler(optuna.trial.FixedTrial({f"deep.layers.{i}": True for i in range(6, 12)}))
    assert every["method"]["layers"] == [9, 10, 11]
    assert list(depth_range((0.0, 1.0), 24)) == list(range(24))
    assert list(depth_range((0.25, 0.75), 24)) == list(range(6, 18))


def test_three_errors_are_all_reported(tmp_path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "methods:\n"
        "  deep:\n"
        "    length: {type: int, low: 10, high: 2}\n"  # empty range
        "    generator: {type: categorical, choices: [npg]}\n"  # a late option under deep
        "train:\n"
        "  learning_rate: 0.1\n"  # unknown key
    )
    with pytest.raises(SearchSpaceError) as exc:
        SearchSpace.load(tmp_path / "bad.yaml")
    problems = exc.value.problems
    assert len(problems) == 3, problems
    assert "methods.deep.length: empty range low=10 > high=2" in problems
    assert any("methods.deep.generator: not a deep option (it is a late option" in p for p in problems)
    assert any(p.startswith("train.learning_rate: unknown") for p in problems)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"methods": {"adapter": {}}}, "methods.adapter: unknown method"),
        ({"methods": {}}, "methods: needs at least one method"),
        ({"methods": {"deep": {"length": {"type": "uniform"}}}}, "methods.deep.length.type: 'uniform' unknown"),
        ({"methods": {"deep": {"layers": {"type": "layer_set", "depth": [0.5, 1.5]}}}}, "must satisfy 0 <= low"),
        ({"methods": {"late": {"layer": {"type": "layer", "depth": [0, 1]}}}, "trian": {}}, "trian: unknown section"),
        (
            {"methods": {"deep": {}}, "head": {"pool": "mean"}},
            r"head.pool: unknown; use one of dropout, kind, pooler, pooling",
        ),
        ({"methods": {"deep": {}}, "head": {"pooling": {"type": "categorical"}}}, "head.pooling"),
        (
            {"methods": {"deep": {"length": {"type": "float", "low": 0, "high": 1, "log": True}}}},
            "log scale needs low > 0",
        ),
    ],
)
def test_bad_spaces(data: dict, message: str) -> None:
    with pytest.raises(SearchSpaceError, match=message):
        SearchSpace.from_dict(data)


def test_fixed_layer_beyond_the_model_depth() -> None:
    space = SearchSpace.from_dict({"methods": {"late": {"layer": 9}}})
    with pytest.raises(SearchSpaceError, match="methods.late.layer: layer 9 is beyond a 6-layer model"):
        space.sampler(num_layers=6)


def test_bad_yaml_syntax(tmp_path) -> None:
    (tmp_path / "s.yaml").write_text("methods: {deep: [\n")
    with pytest.raises(SearchSpaceError, match="not valid YAML"):
        SearchSpace.load(tmp_path / "s.yaml")


def test_a_method_can_have_its_own_training_dimensions() -> None:
    space = SearchSpace.load(SPACES / "all.yaml")  # late has its own lr range; deep uses the shared one
    sampler = space.sampler(num_layers=6)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        config = sampler(trial)
        method, lr = config["method"]["name"], config["train"]["lr"]
        seen.add(method)
        if method == "late":
            assert "late.train.lr" in trial.params and "train.lr" not in trial.params and 1e-4 <= lr <= 1e-2
        elif method == "deep":
            assert "train.lr" in trial.params and 1e-3 <= lr <= 1e-1
        assert config["train"]["steps"] == 300
        study.tell(trial, 0.5)
    assert {"late", "deep"} <= seen
    with pytest.raises(SearchSpaceError, match="methods.late.train.lr2: unknown"):
        SearchSpace.from_dict({"methods": {"late": {"train": {"lr2": 0.1}}}})


@pytest.mark.parametrize("name", ["all", "layers", "lpt", "learned"])
def test_a_drawn_configuration_is_drawn_again_from_its_parameters(name: str) -> None:
    """params_of inverts the sampler: what `--enqueue` gives Optuna makes the sampler return that
    configuration (checked on 20 random draws of each shipped space)."""
    from autoprompt_search.methods import method_from_dict, method_to_dict
    from autoprompt_search.study.space import space_path

    sampler = SearchSpace.load(space_path(name)).sampler(6)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(20):
        trial = study.ask()
        drawn = sampler(trial)
        study.tell(trial, 0.0)
        assert sampler(optuna.trial.FixedTrial(sampler.params_of(drawn))) == drawn
        # as an export writes it: every method option, defaults included
        exported = {**drawn, "method": method_to_dict(method_from_dict(drawn["method"]))}
        assert sampler(optuna.trial.FixedTrial(sampler.params_of(exported))) == drawn


def test_params_of_refuses_what_the_space_cannot_draw() -> None:
    from autoprompt_search.study.space import space_path

    sampler = SearchSpace.load(space_path("all")).sampler(6)
    with pytest.raises(ConfigError, match="method 'dp' is not in the search space"):
        sampler.params_of({"method": {"name": "dp"}})
    with pytest.raises(ConfigError, match="deep.length 300 is outside the space's 2..128"):
        sampler.params_of({"method": {"name": "deep", "length": 300}})
    with pytest.raises(ConfigError, match="late.layer layer 0 is outside the space's 1..5"):
        sampler.params_of({"method": {"name": "late", "layer": 0}})


def test_an_enqueued_config_must_match_what_the_space_fixes() -> None:
    """An option the space fixes or leaves at its default is not a parameter: a config with another
    value would run as another configuration, silently. It is refused instead."""
    from autoprompt_search.study.space import space_path

    sampler = SearchSpace.load(space_path("all")).sampler(6)
    with pytest.raises(ConfigError, match=r"method.init is 'normal' but this search space uses 'vocab'"):
        sampler.params_of({"method": {"name": "deep", "layers": [0], "init": "normal"}})
    with pytest.raises(ConfigError, match=r"head.dropout is 0.1 but this search space uses 0.0"):
        sampler.params_of({"method": {"name": "probe"}, "head": {"dropout": 0.1}})
    fixed = SearchSpace.from_dict({"methods": {"late": {"layer": {"type": "layer"}, "length": 2}}}).sampler(6)
    with pytest.raises(ConfigError, match=r"method.length is 4 but this search space uses 2"):
        fixed.params_of({"method": {"name": "late", "layer": 3, "length": 4}})
    assert fixed.params_of({"method": {"name": "late", "layer": 3, "length": 2}, "train": {"steps": 9}}) == {
        "late.layer": 3
    }


def test_a_short_study_gets_a_short_random_start_and_tpe_learns_the_conditional_space() -> None:
    """With Optuna's 10 random startup trials a study of 8 (what a 2-core machine affords) would be
    random search; the study's TPE starts modelling after a quarter of a short study. On 40 trials of
    the `all` space scored 1 for deep prompts and 0 otherwise, its TPE (multivariate, grouped by
    method) samples deep about twice as often after its startup as random search does."""
    from autoprompt_search.study.options import StudyOptions
    from autoprompt_search.study.searcher import make_sampler

    assert [StudyOptions(num_samples=n).tpe_startup_trials for n in (2, 8, 12, 40, 100)] == [2, 2, 3, 10, 10]
    assert StudyOptions(num_samples=8, startup_trials=5).tpe_startup_trials == 5
    assert make_sampler(StudyOptions(num_samples=8))._n_startup_trials == 2
    deep = {}
    for startup in (0, 40):  # auto (10 here), or random throughout
        sampler = SearchSpace.load(SPACES / "all.yaml").sampler(num_layers=6)
        study = optuna.create_study(
            direction="maximize", sampler=make_sampler(StudyOptions(num_samples=40, startup_trials=startup))
        )
        study.optimize(lambda trial: float(sampler(trial)["method"]["name"] == "deep"), n_trials=40)  # noqa: B023
        deep[startup] = sum(t.value for t in study.trials[10:])  # type: ignore[misc]
    assert deep[0] >= 17 and deep[40] <= 13, deep  # of 30 trials; random's expectation is 10
