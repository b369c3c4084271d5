"""Declarative search spaces (`search_spaces/*.yaml`): validation and Optuna define-by-run sampling.

A space names the methods it explores and, per method, how each option is drawn; `train`
holds recipe dimensions shared by all methods. Layers are expressed as fractions of the
model's depth so one file serves any model size:

    methods:
      deep:
        layers: {type: layer_set, depth: [0.0, 1.0], min_layers: 1, max_layers: 4}
        length: {type: int, low: 4, high: 32, log: true}
        position: {type: categorical, choices: [prefix, split]}
      late:
        layer: {type: layer, depth: [0.25, 0.75]}
        generator: {type: categorical, choices: [npg, appg, mppg]}
        train:              # this method's own recipe dimensions replace the shared ones below
          lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    train:
      lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}
      steps: 300            # a plain value is fixed
    head:                   # the classifier head's options (heads.HeadConfig)
      pooling: {type: categorical, choices: [token, mean]}

Every problem in a file is reported at once (`SearchSpaceError.problems`). Sampling is a
picklable callable taking an Optuna trial, so `optuna.trial.FixedTrial` tests a space without
a study, and Ray Tune's `OptunaSearch` can checkpoint it.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

from autoprompt_search.config import ExperimentConfig
from autoprompt_search.engine.heads import HeadConfig
from autoprompt_search.errors import ConfigError
from autoprompt_search.methods import METHODS
from autoprompt_search.study.space_validation import validate

SAMPLED = ("method", "train", "head")  # the sections of one drawn configuration


def sampled_of(mapping: dict[str, Any]) -> dict[str, Any]:
    """The drawn part of a configuration (a Tune trial's config, a fused member, a table row's
    `config`): its method, recipe and head options; sections a space does not draw are absent."""
    out = {"method": dict(mapping.get("method") or {}), "train": dict(mapping.get("train") or {})}
    if mapping.get("head"):
        out["head"] = dict(mapping["head"])
    return out


def experiment_for(base: dict[str, Any], sampled: dict[str, Any]) -> ExperimentConfig:
    """The base experiment with a sampled {'method': {...}, 'train': {...}[, 'head': {...}]} applied."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    data["method"] = dict(sampled["method"])
    data["train"] = {**data.get("train", {}), **sampled.get("train", {})}
    data["head"] = {**(data.get("head") or {}), **(sampled.get("head") or {})}
    return ExperimentConfig.from_dict(data)


class SearchSpaceError(ConfigError):
    """All problems of one search-space file; `str()` is one line listing each."""

    def __init__(self, where: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"search space {where}: {len(problems)} problem(s): " + "; ".join(problems))


def depth_range(depth: tuple[float, float], num_layers: int) -> range:
    """Block indices covered by a depth fraction range [lo, hi] of an N-block model."""
    lo = min(num_layers - 1, math.floor(depth[0] * num_layers))
    hi = max(lo, math.ceil(depth[1] * num_layers) - 1)
    return range(lo, min(hi, num_layers - 1) + 1)


@dataclasses.dataclass
class SearchSpace:
    methods: dict[str, dict[str, Any]]  # method -> option -> fixed value or dimension dict
    train: dict[str, Any]  # train option -> fixed value or dimension dict
    where: str = "<dict>"
    head: dict[str, Any] = dataclasses.field(default_factory=dict)  # head option -> value or dimension

    @staticmethod
    def from_dict(data: Any, where: str = "<dict>") -> SearchSpace:
        problems = validate(data)
        if problems:
            raise SearchSpaceError(where, problems)
        return SearchSpace(dict(data["methods"]), dict(data.get("train") or {}), where, dict(data.get("head") or {}))

    @staticmethod
    def load(path: str | Path) -> SearchSpace:
        p = space_path(str(path))
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise SearchSpaceError(str(p), [f"not valid YAML ({str(exc).splitlines()[0]})"]) from exc
        return SearchSpace.from_dict(data, str(p))

    def check_model(self, num_layers: int) -> None:
        """Problems that need the model: fixed layer indices beyond its depth."""
        problems = []
        for method, options in self.methods.items():
            for name, spec in options.items():
                fixed = [] if isinstance(spec, dict) else (list(spec) if isinstance(spec, (list, tuple)) else [spec])
                if name in ("layer", "layers") or name.endswith("_layers"):
                    bad = [i for i in fixed if not 0 <= int(i) < num_layers]
                    if bad:
                        problems.append(
                            f"methods.{method}.{name}: layer {bad[0]} is beyond a {num_layers}-layer model (0..{num_layers - 1})"
                        )
        if problems:
            raise SearchSpaceError(self.where, problems)

    def sampler(self, num_layers: int) -> SpaceSampler:
        self.check_model(num_layers)
        return SpaceSampler(self, num_layers)


class SpaceSampler:
    """Optuna define-by-run: trial -> {'method': {...}, 'train': {...}[, 'head': {...}]} (picklable)."""

    def __init__(self, space: SearchSpace, num_layers: int) -> None:
        self.space = space
        self.num_layers = num_layers

    def __call__(self, trial: Any) -> dict[str, Any]:
        names = list(self.space.methods)
        method = names[0] if len(names) == 1 else trial.suggest_categorical("method", names)
        specs = dict(self.space.methods[method] or {})
        # A method's own `train:` (say a generator's learning-rate range) replaces the shared one's keys.
        own_train = specs.pop("train", None) or {}
        options: dict[str, Any] = {}
        if "form" in specs:  # drawn first: a kv prefix has no position to choose
            options["form"] = self._draw(trial, f"{method}.form", specs.pop("form"))
        for name, spec in specs.items():
            if options.get("form") == "kv" and name in ("position", "split_at"):
                continue
            options[name] = self._draw(trial, f"{method}.{name}", spec)
        if options.get("position") == "prefix":
            options.pop("split_at", None)
        elif options.get("position") == "split" and "split_at" not in options:
            options["split_at"] = trial.suggest_int(f"{method}.split_at", 1, int(options.get("length", 20)))
        train = {
            name: self._draw(trial, f"{method}.train.{name}" if name in own_train else f"train.{name}", spec)
            for name, spec in (self.space.train | own_train).items()
        }
        head = {name: self._draw(trial, f"head.{name}", spec) for name, spec in self.space.head.items()}
        return {"method": {"name": method, **options}, "train": train} | ({"head": head} if head else {})

    def params_of(self, config: dict[str, Any], where: str = "--enqueue") -> dict[str, Any]:
        """The Optuna parameters under which this sampler draws `config` ({'method': ...,
        'train': ...}, say an exported trial): what a study asks its sampler to try first.
        Searched dimensions the config does not name stay free; fixed ones are not parameters."""
        method_cfg, train_cfg = dict(config.get("method") or {}), dict(config.get("train") or {})
        head_cfg = dict(config.get("head") or {})
        method = method_cfg.get("name")
        names = list(self.space.methods)
        if method not in names:
            raise ConfigError(f"{where}: method {method!r} is not in the search space ({', '.join(names)})")
        params: dict[str, Any] = {} if len(names) == 1 else {"method": method}
        specs = dict(self.space.methods[method] or {})
        own_train = specs.pop("train", None) or {}
        for name, spec in specs.items():
            if name in method_cfg:
                self._param(params, f"{method}.{name}", spec, method_cfg[name], where)
        if method_cfg.get("position") == "split" and "split_at" not in specs and "split_at" in method_cfg:
            params[f"{method}.split_at"] = method_cfg["split_at"]
        for name, spec in (self.space.train | own_train).items():
            if name in train_cfg:
                key = f"{method}.train.{name}" if name in own_train else f"train.{name}"
                self._param(params, key, spec, train_cfg[name], where)
        for name, spec in self.space.head.items():
            if name in head_cfg:
                self._param(params, f"head.{name}", spec, head_cfg[name], where)
        self._check_fixed_as_given(specs, method_cfg, self.space.head, head_cfg, where)
        return params

    @staticmethod
    def _check_fixed_as_given(
        specs: dict[str, Any],
        method_cfg: dict[str, Any],
        head_specs: dict[str, Any],
        head_cfg: dict[str, Any],
        where: str,
    ) -> None:
        """An option the space fixes, or leaves at its default, must have that value in the config:
        otherwise the enqueued trial would silently run another configuration. (Train options are
        the new study's recipe: its steps, batch size and seed apply.)"""
        from autoprompt_search.methods import method_from_dict, method_to_dict

        def plain(value: Any) -> Any:
            return list(value) if isinstance(value, tuple) else value

        method_defaults = method_to_dict(method_from_dict({"name": method_cfg["name"]}))
        head_defaults = {f.name: getattr(HeadConfig(), f.name) for f in dataclasses.fields(HeadConfig)}
        sections = [("method", method_cfg, specs, method_defaults), ("head", head_cfg, head_specs, head_defaults)]
        for section, given, fixed, defaults in sections:
            for name, value in given.items():
                if name == "name" or isinstance(fixed.get(name), dict):
                    continue  # a dimension: checked against its range by _param
                if section == "method" and name == "split_at" and given.get("position") == "split":
                    continue  # drawn as its own parameter
                if section == "method" and name in ("position", "split_at") and given.get("form") == "kv":
                    continue  # a kv prefix has no position: the sampler never sets one
                expected = fixed[name] if name in fixed else defaults.get(name)
                if plain(value) != plain(expected):
                    raise ConfigError(
                        f"{where}: {section}.{name} is {value!r} but this search space uses {expected!r} (fixed, or "
                        "left at its default); make it a dimension of the space or drop it from the config"
                    )

    def _param(self, params: dict[str, Any], name: str, spec: Any, value: Any, where: str) -> None:
        if not isinstance(spec, dict):
            return  # a fixed value, not a dimension
        kind = spec["type"]
        if kind == "categorical":
            if value not in spec["choices"]:
                raise ConfigError(f"{where}: {name} {value!r} is not one of the space's choices {spec['choices']}")
            params[name] = value
            return
        if kind in ("int", "float"):
            if not spec["low"] <= value <= spec["high"]:
                raise ConfigError(f"{where}: {name} {value} is outside the space's {spec['low']}..{spec['high']}")
            params[name] = value
            return
        allowed = depth_range(tuple(spec.get("depth", (0.0, 1.0))), self.num_layers)
        method = METHODS.get(name.split(".")[0])
        first = getattr(method.config_class if method is not None else None, "first_layer", 0)
        allowed = range(max(allowed.start, first), max(allowed.stop, first + 1))
        chosen = [value] if kind == "layer" else list(value)
        outside = [i for i in chosen if i not in allowed]
        if outside:
            raise ConfigError(
                f"{where}: {name} layer {outside[0]} is outside the space's {allowed.start}..{allowed.stop - 1}"
            )
        if kind == "layer":
            params[name] = value
        else:
            params.update({f"{name}.{i}": i in chosen for i in allowed})

    def _draw(self, trial: Any, name: str, spec: Any) -> Any:
        if not isinstance(spec, dict):
            return list(spec) if isinstance(spec, tuple) else spec
        kind = spec["type"]
        if kind == "int":
            return trial.suggest_int(
                name, spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step", 1)
            )
        if kind == "float":
            return trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
        if kind == "categorical":
            return trial.suggest_categorical(name, spec["choices"])
        allowed = depth_range(tuple(spec.get("depth", (0.0, 1.0))), self.num_layers)
        # Generator methods (late, spt) start at block 1: a generator at 0 reads word embeddings.
        method = METHODS.get(name.split(".")[0])
        config_class = method.config_class if method is not None else None
        first = getattr(config_class, "first_layer", 0)
        allowed = range(max(allowed.start, first), max(allowed.stop, first + 1))
        if kind == "layer":
            return trial.suggest_int(name, allowed.start, allowed.stop - 1)
        return self._layer_set(trial, name, spec, allowed)

    def _layer_set(self, trial: Any, name: str, spec: dict[str, Any], allowed: range) -> list[int]:
        # One boolean per layer: Optuna's samplers model each layer's effect separately, which finds
        # good subsets far faster than one categorical over subset strings.
        chosen = [i for i in allowed if trial.suggest_categorical(f"{name}.{i}", [False, True])]
        low = min(spec.get("min_layers", 1), len(allowed))
        high = min(spec.get("max_layers") or len(allowed), len(allowed))
        # Repair to the size bounds deterministically: add the highest unchosen layers (late layers
        # matter most for prompts), drop the lowest chosen ones.
        for i in reversed(allowed):
            if len(chosen) >= low:
                break
            if i not in chosen:
                chosen.append(i)
        chosen = sorted(chosen)[-high:]
        return sorted(chosen)


def fix_steps(mapping: dict[str, Any], steps: int, if_searched: str) -> dict[str, Any]:
    """The space mapping with `train.steps` fixed to `steps`; ConfigError(if_searched) when the
    space searches the steps (a budget given from outside cannot fix a searched dimension)."""
    train = dict(mapping.get("train") or {})
    if isinstance(train.get("steps"), dict):
        raise ConfigError(if_searched)
    return {**mapping, "train": {**train, "steps": steps}}


def space_path(spec: str) -> Path:
    """A search-space file, or the YAML of a shipped space named `spec` (all, layers, lpt, ...)."""
    from search_spaces import shipped

    path = Path(spec)
    if path.is_file():
        return path
    spaces = shipped()
    if spec in spaces:
        return spaces[spec]
    raise ConfigError(f"--space: {spec!r} is neither a file nor a shipped space ({', '.join(spaces)})")


def preview(path: str | Path, num_layers: int, samples: int, seed: int = 0) -> list[dict[str, Any]]:
    """Validate a space for an N-layer model and draw `samples` random configurations from it."""
    import optuna

    sampler = SearchSpace.load(path).sampler(num_layers)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(samples):
        trial = study.ask()
        out.append(sampler(trial))
        study.tell(trial, 0.0)
    return out
