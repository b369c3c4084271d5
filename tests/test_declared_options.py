"""One declaration per option: every option field is a flag of its commands and a keyword of the
API, and every flag is a declared field or the command's own parameter."""

from __future__ import annotations

import inspect
from dataclasses import fields

import pytest
import typer

from autoprompt_search import search, train
from autoprompt_search.compare.arms import CompareOptions
from autoprompt_search.experiment_options import ExperimentOptions
from autoprompt_search.option_fields import declared, flag_of
from autoprompt_search.study.cluster import RaySettings
from autoprompt_search.study.options import StudyOptions
from cli.main import app

# Fields that are state, not options: what a study or comparison derives from its inputs.
NOT_OPTIONS = {
    StudyOptions: {"space", "space_file", "experiment"},
    CompareOptions: {"space", "space_file", "experiment"},
    RaySettings: {"num_gpus", "preload_modules"},
    ExperimentOptions: set(),
}
# Each command's own parameters: what it does with the options, not an option of a run or study.
COMMANDS = {
    "train": ((ExperimentOptions,), {"output", "overwrite", "quiet"}),
    "search": ((StudyOptions, RaySettings, ExperimentOptions), {"ctx", "space", "resume", "results_dir", "overwrite"}),
    "compare": ((CompareOptions, RaySettings, ExperimentOptions), {"space", "results_dir", "overwrite"}),
    "space": ((StudyOptions, ExperimentOptions), {"path", "samples"}),
}


@pytest.mark.parametrize("cls", list(NOT_OPTIONS), ids=lambda c: c.__name__)
def test_every_field_a_user_sets_is_declared_as_an_option(cls: type) -> None:
    undeclared = {f.name for f in fields(cls) if flag_of(f) is None}
    assert undeclared == NOT_OPTIONS[cls]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_flag_is_a_declared_option_or_the_commands_own(command: str) -> None:
    sources, own = COMMANDS[command]
    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    flags = {p.name for p in click_command.params} - {"help"}
    options = {f.name for cls in sources for f, _ in declared(cls, command)}
    assert options <= flags, options - flags
    assert flags - options == own - {"ctx"}


def test_the_api_takes_every_option_of_its_command_as_a_typed_keyword() -> None:
    for function, command, sources in ((train, "train", (ExperimentOptions,)),
                                       (search, "search", (StudyOptions, RaySettings, ExperimentOptions))):  # fmt: skip
        params = inspect.signature(function).parameters
        for cls in sources:
            for f, _ in declared(cls, command):
                assert f.name in params and params[f.name].annotation is not inspect.Parameter.empty, f.name
    assert inspect.signature(search).parameters["num_samples"].default == StudyOptions().num_samples


def test_help_shows_each_options_panel_and_default() -> None:
    from typer.testing import CliRunner

    out = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    assert "Recipe" in out and "Method" in out and "Data" in out
    steps_line = next(line for line in out.splitlines() if "--steps" in line)
    assert "300" in steps_line  # the embedded experiment's default, from TrainConfig
    out = CliRunner().invoke(app, ["search", "--help"], env={"COLUMNS": "200"}).output
    assert "Sampler" in out and "Resources" in out and "Ray" in out
    assert "(6)" in next(line for line in out.splitlines() if "--num-samples" in line)
