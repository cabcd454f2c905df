import json

import pytest

from covidct.config import CLASS_NAMES, ModelSpec, Provenance, SpecError, TrainConfig


def test_defaults_follow_the_contract() -> None:
    spec = ModelSpec()
    assert spec.class_names == ("Normal", "Pneumonia", "COVID-19")
    assert (spec.input_name, spec.probabilities_name, spec.cam_name) == (
        "image",
        "probabilities",
        "cam",
    )
    assert spec.window == (-600.0, 1500.0)
    assert spec.num_classes == 3


def test_json_round_trip(tmp_path) -> None:
    spec = ModelSpec(
        name="ct-demo",
        image_size=128,
        backbone="densenet121",
        temperature=1.7,
        provenance=Provenance(data_fingerprint="ab" * 32, synthetic=True, source_run="runs/x"),
    )
    path = tmp_path / "model_spec.json"
    spec.save(path)
    again = ModelSpec.load(path)
    assert again == spec
    assert json.loads(path.read_text())["class_names"] == list(CLASS_NAMES)
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"class_names": ["COVID-19", "Pneumonia", "Normal"]}, "class_names"),
        ({"class_names": ["Normal", "COVID-19"]}, "class_names"),
        ({"image_size": 16}, "image_size"),
        ({"image_size": 4096}, "image_size"),
        ({"image_size": "224"}, "image_size"),
        ({"image_size": 224.0}, "image_size"),
        ({"input_dtype": "FP32"}, "input_dtype"),
        ({"cam_name": "image"}, "distinct"),
        ({"window_width": 0}, "window_width"),
        ({"temperature": -1}, "temperature"),
        ({"interpolation": "nearest"}, "interpolation"),
        ({"name": "bad name/x"}, "name"),
        ({"schema_version": 9}, "schema_version"),
        ({"colour": "blue"}, "unknown ModelSpec field"),
        ({"provenance": {"synthetic": True, "oops": 1}}, "unknown provenance field"),
    ],
)
def test_invalid_specs_are_rejected_with_the_field_named(change, message) -> None:
    data = ModelSpec().to_dict() | change
    with pytest.raises(SpecError, match=message):
        ModelSpec.from_dict(data)


def test_load_errors_name_the_file(tmp_path) -> None:
    bad = tmp_path / "model_spec.json"
    bad.write_text("{not json")
    with pytest.raises(SpecError, match=r"model_spec\.json: not valid JSON"):
        ModelSpec.load(bad)
    with pytest.raises(SpecError, match="cannot read"):
        ModelSpec.load(tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"brightness": -0.1}, "brightness"),
        ({"contrast": 1.0}, "contrast"),
        ({"zoom": 2}, "zoom"),
        ({"shift": -1}, "shift"),
        ({"rotation_degrees": 270}, "rotation_degrees"),
    ],
)
def test_invalid_augmentation_is_rejected_with_the_field_named(change, message) -> None:
    with pytest.raises(SpecError, match=message):
        TrainConfig(**change)
    assert TrainConfig(**dict.fromkeys(change, 0)).augment  # 0 turns that one step off


def test_the_fingerprint_names_the_contract_and_survives_a_round_trip() -> None:
    spec = ModelSpec(image_size=64)
    assert spec.fingerprint() == ModelSpec.from_dict(spec.to_dict()).fingerprint()
    assert len(spec.fingerprint()) == 64
    assert spec.fingerprint() != ModelSpec(image_size=128).fingerprint()
    assert spec.fingerprint() != ModelSpec(image_size=64, temperature=1.5).fingerprint()
