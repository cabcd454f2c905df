"""Every default of ``covidct train`` (and the input size of ``covidct data``) is TrainConfig's."""

from __future__ import annotations

import dataclasses
from typing import Any

import typer

from cli import data, train
from covidct.config import DEFAULT_IMAGE_SIZE, ModelSpec, TrainConfig

#: Options spelled differently from their TrainConfig field.
RENAMED = {"rotation": "rotation_degrees", "name": "model_name"}
#: Options of the command itself, not of the training recipe.
NOT_CONFIG = {"data", "out", "launch_local", "max_restarts", "resume", "cache_dir"}
#: Fields no option sets: the number of workers comes from the cluster.
NO_OPTION = {"workers"}


def _params(app: typer.Typer, command: str | None = None) -> dict[str, Any]:
    """The command's parameters by name (an app of one command is that command)."""
    cmd = typer.main.get_command(app)
    if command is not None:
        cmd = cmd.commands[command]  # type: ignore[attr-defined]
    return {p.name: p for p in cmd.params if p.name}


def test_every_train_option_defaults_to_its_train_config_field() -> None:
    defaults = TrainConfig()
    params = _params(train.app, "train")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    covered = set()
    for name, param in params.items():
        if name in NOT_CONFIG:
            continue
        field = RENAMED.get(name, name)
        assert field in fields, f"--{name}: no TrainConfig field {field}"
        assert param.default == getattr(defaults, field), f"--{name}"
        assert type(param.default) is type(getattr(defaults, field)), f"--{name}"
        covered.add(field)
    assert fields - covered == NO_OPTION


def test_data_commands_default_to_the_model_input_size() -> None:
    assert DEFAULT_IMAGE_SIZE == TrainConfig().image_size == ModelSpec().image_size
    prepare = _params(data.data_app, "prepare")
    assert prepare["size"].default == DEFAULT_IMAGE_SIZE
    preprocess = _params(data.app)  # its app's only command: typer makes it the command
    assert preprocess["size"].default is None  # then the spec's (or the default) size
    assert f"(default: {DEFAULT_IMAGE_SIZE})" in preprocess["size"].help
