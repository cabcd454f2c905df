"""Triton's model config as the ``ModelConfig`` protobuf, and the ModelSpec carried inside it.

Export writes the ModelSpec into ``config.pbtxt`` as one parameter (``SPEC_PARAMETER``,
a JSON string); the gateway, the benchmarks and the repository read it back here, from
text, from the protobuf Triton returns over gRPC, or from its JSON form.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from covidct.config import ModelSpec, SpecError
from covidct.errors import CovidctError

SPEC_PARAMETER = "covidct_model_spec"
ModelConfig = model_config_pb2.ModelConfig


class ConfigError(CovidctError, ValueError):
    """A model config that does not parse, or carries no usable ModelSpec."""


def parse_config(text: str) -> Any:
    """A ``config.pbtxt`` text as a ModelConfig; unknown fields or bad values are refused."""
    try:
        return text_format.Parse(text, ModelConfig())
    except text_format.ParseError as e:
        raise ConfigError(f"not a Triton model config: {e}") from e


def config_text(config: Any) -> str:
    """ModelConfig as ``config.pbtxt`` text (deterministic: map entries sorted by key)."""
    return str(text_format.MessageToString(config))


def config_json(config: Any) -> str:
    """ModelConfig as the JSON Triton takes as a load-time config override."""
    return str(json_format.MessageToJson(config, preserving_proto_field_name=True))


def set_spec(config: Any, spec: ModelSpec) -> None:
    """Store ``spec`` in ``config`` as the ``SPEC_PARAMETER`` parameter."""
    value = json.dumps(spec.to_dict(), sort_keys=True)
    config.parameters[SPEC_PARAMETER].string_value = value


def spec_of(config: Any) -> ModelSpec | None:
    """The ModelSpec a config carries: a ModelConfig, its text, or the JSON dict Triton's
    clients return (``as_json=True`` over gRPC, or HTTP). None when there is none.

    Raises:
        ConfigError: the config or the parameter's value is malformed.
    """
    if isinstance(config, str):
        config = parse_config(config)
    elif isinstance(config, Mapping):
        # Only the parameters are parsed: a newer Triton may send fields this schema lacks.
        params = {"parameters": config.get("parameters", {})}
        try:
            config = json_format.ParseDict(params, ModelConfig())
        except json_format.ParseError as e:
            raise ConfigError(f"not a Triton model config: {e}") from e
    if SPEC_PARAMETER not in config.parameters:
        return None
    try:
        return ModelSpec.from_dict(json.loads(config.parameters[SPEC_PARAMETER].string_value))
    except (json.JSONDecodeError, SpecError, TypeError) as e:
        raise ConfigError(f"parameter {SPEC_PARAMETER} is not a valid ModelSpec: {e}") from e
