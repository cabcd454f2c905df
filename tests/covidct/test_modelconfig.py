"""The one reader of the ModelSpec carried in a Triton model config, in each form it arrives."""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format

from covidct.config import ModelSpec, Provenance
from covidct.modelconfig import (
    SPEC_PARAMETER,
    ConfigError,
    ModelConfig,
    config_text,
    parse_config,
    set_spec,
    spec_of,
)

SPEC = ModelSpec(image_size=96, provenance=Provenance(synthetic=True))


def _config() -> ModelConfig:
    config = ModelConfig(name="covidct", max_batch_size=4)
    set_spec(config, SPEC)
    return config


def test_spec_reads_back_from_message_text_and_both_json_forms() -> None:
    config = _config()
    grpc_json = json.loads(json_format.MessageToJson(config, preserving_proto_field_name=True))
    http_json = {**grpc_json, "a_field_from_a_newer_triton": {"x": 1}}
    for form in (config, config_text(config), grpc_json, http_json):
        assert spec_of(form) == SPEC


def test_a_config_without_the_parameter_has_no_spec() -> None:
    assert spec_of(ModelConfig(name="other")) is None
    assert spec_of({"name": "other"}) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [("not json", "not a valid ModelSpec"), ('{"image_sise": 64}', "image_sise")],
)
def test_a_malformed_spec_is_a_config_error(value: str, reason: str) -> None:
    config = ModelConfig(name="covidct")
    config.parameters[SPEC_PARAMETER].string_value = value
    with pytest.raises(ConfigError, match=reason):
        spec_of(config)


def test_unknown_fields_in_text_are_refused() -> None:
    with pytest.raises(ConfigError, match="not a Triton model config"):
        parse_config('name: "covidct"\nmax_batch_sise: 8\n')
