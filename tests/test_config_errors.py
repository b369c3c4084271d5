"""Bad configs fail with one line naming the field."""

from __future__ import annotations

import pytest
from conftest import tiny_configs

from autoprompt_search.backbones import BackboneInfo, backbone_from_config
from autoprompt_search.config import ExperimentConfig, load_config_file
from autoprompt_search.methods import DeepConfig, LateConfig, build_method, method_config


@pytest.fixture(scope="module")
def info() -> BackboneInfo:
    return BackboneInfo.of(backbone_from_config(tiny_configs()["bert"]))


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_layer_out_of_range(info: BackboneInfo) -> None:
    with pytest.raises(ValueError) as exc:
        build_method(DeepConfig(layers=(0, 4)), info)
    assert one_line(exc).startswith("method.layers: layer 4 out of range for a 4-layer model; use 0..3")


def test_lpt_layer_out_of_range(info: BackboneInfo) -> None:
    with pytest.raises(ValueError, match=r"^method.layer: insertion layer -1 out of range .*; use 1..3$"):
        build_method(LateConfig(layer=-1), info)


def test_generators_refuse_layer_0() -> None:
    from autoprompt_search.methods import SptConfig

    with pytest.raises(ValueError) as exc:
        LateConfig(layer=0)
    assert one_line(exc).startswith("method.layer: a prompt generator at layer 0 reads word embeddings")
    assert "`deep --layers 0`" in one_line(exc)
    with pytest.raises(ValueError, match=r"^method.layers: a prompt generator at layer 0"):
        SptConfig(layers=(0, 2))
    assert SptConfig().candidates(4) == (1, 2, 3)


@pytest.mark.parametrize("length", [0, -3])
def test_non_positive_length(length: int) -> None:
    with pytest.raises(ValueError) as exc:
        DeepConfig(length=length)
    assert one_line(exc).startswith("method.length: must be > 0")
    with pytest.raises(ValueError, match=r"^method.length"):
        LateConfig(length=length)


def test_unknown_method() -> None:
    with pytest.raises(ValueError) as exc:
        method_config("adapter")
    assert one_line(exc) == "method: 'adapter' unknown; use one of probe, deep, late, spt, dp, lora, kv_lora"


def test_unknown_generator() -> None:
    with pytest.raises(ValueError) as exc:
        LateConfig(generator="xpg")
    assert one_line(exc).startswith("method.generator: 'xpg' unknown; use one of npg, appg, mppg")


def test_unknown_field_and_bad_split() -> None:
    with pytest.raises(ValueError, match=r"^method.lenght: unknown field; known fields are"):
        method_config("deep", {"lenght": 3})
    with pytest.raises(ValueError, match=r"^method.split_at: 7 must be in 1..5"):
        DeepConfig(length=5, position="split", split_at=7)
    with pytest.raises(ValueError, match=r"^method.position: 'middle' unknown"):
        DeepConfig(position="middle")


def test_train_and_data_fields() -> None:
    with pytest.raises(ValueError, match=r"^train.lr: must be > 0"):
        ExperimentConfig.from_dict({"train": {"lr": 0}})
    with pytest.raises(ValueError, match=r"^data.max_length: must be > 0"):
        ExperimentConfig.from_dict({"data": {"max_length": 0}})
    with pytest.raises(ValueError, match=r"^data.task: 'imdbx' unknown"):
        ExperimentConfig.from_dict({"data": {"task": "imdbx"}})
    with pytest.raises(ValueError, match=r"^config.trian: unknown section"):
        ExperimentConfig.from_dict({"trian": {}})


def test_config_file_round_trip_and_bad_yaml(tmp_path) -> None:
    import yaml

    cfg = ExperimentConfig(method=LateConfig(layer=2, generator="mppg"))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_config_file(tmp_path / "c.yaml").to_dict() == cfg.to_dict()
    (tmp_path / "bad.yaml").write_text("method: [unclosed\n")
    with pytest.raises(ValueError, match=r"^config: .*bad.yaml is not valid YAML"):
        load_config_file(tmp_path / "bad.yaml")
    (tmp_path / "evil.yaml").write_text("!!python/object/apply:os.system ['true']\n")
    with pytest.raises(ValueError, match="not valid YAML"):  # safe loading only
        load_config_file(tmp_path / "evil.yaml")


def test_a_method_registers_itself_and_probe_is_one_of_them() -> None:
    from dataclasses import dataclass

    from autoprompt_search.backbones import BackboneInfo
    from autoprompt_search.methods import METHODS, LinearProbe, ProbeConfig, build_method, register_method
    from autoprompt_search.methods.probe import LinearProbe as Registered

    info = BackboneInfo(num_layers=4, hidden_size=8, max_positions=64, causal=False)
    probe = build_method(ProbeConfig(), info)
    assert isinstance(probe, LinearProbe) and probe.start_layer == 4 and probe.length == 0
    assert list(METHODS)[:5] == ["probe", "deep", "late", "spt", "dp"]

    @dataclass
    class EchoConfig:
        length: int = 1

        def check(self, info: BackboneInfo) -> None:
            return None

    @register_method("echo-test", EchoConfig)
    class Echo(Registered):
        pass

    try:
        assert isinstance(build_method(method_config("echo-test", {"length": 2}), info), Echo)
        assert Echo.name == "echo-test" and Echo.config_class is EchoConfig
        with pytest.raises(ValueError, match="registered twice"):
            register_method("echo-test", EchoConfig)(type("Other", (Registered,), {}))
    finally:
        METHODS.pop("echo-test")


@pytest.mark.parametrize(
    "method",
    [
        {"name": "deep", "layers": [0, 1, 2, 3], "form": "kv"},
        {"name": "deep", "layers": [1]},
        {"name": "deep", "layers": [0], "position": "split", "split_at": 2},
        {"name": "late", "layer": 2},
    ],
)
def test_first_pooling_needs_an_input_prompt_before_the_text(method: dict) -> None:
    with pytest.raises(ValueError) as exc:
        ExperimentConfig.from_dict({"method": method, "head": {"pooling": "first"}})
    assert one_line(exc).startswith("head.pooling: first reads an input prompt's first slot; use it with method deep")
    assert ExperimentConfig.from_dict({"method": {"name": "deep", "layers": [0]}, "head": {"pooling": "first"}})


@pytest.mark.parametrize(
    "method, error",
    [
        ({"init": "zeros"}, "method.init: 'zeros' unknown; use vocab or normal"),
        ({"init": "normal", "form": "kv"}, "method.init: chooses how an input prompt starts (hidden form at layer 0)"),
        ({"init": "normal", "layers": [2]}, "method.init: chooses how an input prompt starts (hidden form at layer 0)"),
    ],
)
def test_input_prompt_init_is_checked(method: dict, error: str) -> None:
    with pytest.raises(ValueError) as exc:
        ExperimentConfig.from_dict({"method": {"name": "deep", **method}})
    assert one_line(exc).startswith(error)
    assert ExperimentConfig.from_dict({"method": {"name": "deep", "layers": [0, 3], "init": "normal"}})


def test_a_method_config_written_before_split_at_still_loads() -> None:
    from autoprompt_search.methods import method_from_dict

    old = {"name": "deep", "layers": [0], "length": 4, "position": "split", "split": 2}
    assert method_from_dict(old).split_at == 2
