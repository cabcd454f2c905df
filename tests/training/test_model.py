"""The classifier graph: contract tensors, CAM identity, serialisation, freezing rules."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from covidct.config import ModelSpec
from training.model import (
    BACKBONES,
    CAMHead,
    ModelError,
    build_classifier,
    check_backbone,
    set_trainable,
)


@pytest.fixture(scope="module")
def small() -> tuple[ModelSpec, object]:
    keras.utils.set_random_seed(1)
    spec = ModelSpec(image_size=64, backbone="densenet121")
    return spec, build_classifier(spec, weights=None)


def test_tensors_follow_the_spec(small) -> None:
    _, clf = small
    (inp,) = clf.serve_model.inputs
    assert inp.dtype == "uint8" and tuple(inp.shape) == (None, 64, 64, 1)
    x = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 1), dtype=np.uint8)
    out = clf.serve_model.predict_on_batch(x)
    assert set(out) == {"probabilities", "cam"}
    assert out["probabilities"].shape == (3, 3) and out["cam"].shape == (3, 2, 2, 3)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-5)


def test_cam_identity(small) -> None:
    """Spatial mean of cam + bias equals the logits; softmax(logits / T) the probabilities."""
    _, clf = small
    x = np.random.default_rng(1).integers(0, 256, (4, 64, 64, 1), dtype=np.uint8)
    out = clf.serve_model.predict_on_batch(x)
    head = clf.serve_model.get_layer("cam_head")
    assert isinstance(head, CAMHead)
    bias = keras.ops.convert_to_numpy(head.bias)
    logits = out["cam"].mean(axis=(1, 2)) + bias
    t = float(keras.ops.convert_to_numpy(clf.softmax.temperature))
    expected = np.exp(logits / t) / np.exp(logits / t).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
    # The head really uses its kernel for both: a changed kernel changes both views.
    assert np.abs(out["cam"]).max() > 0


def test_temperature_changes_confidence_not_ranking(small) -> None:
    _, clf = small
    x = np.random.default_rng(2).integers(0, 256, (4, 64, 64, 1), dtype=np.uint8)
    base = clf.serve_model.predict_on_batch(x)["probabilities"]
    clf.softmax.set_temperature(4.0)
    try:
        hot = clf.serve_model.predict_on_batch(x)["probabilities"]
    finally:
        clf.softmax.set_temperature(1.0)
    assert (hot.argmax(1) == base.argmax(1)).all()
    assert hot.max(axis=1).mean() <= base.max(axis=1).mean() + 1e-6


def test_keras_file_round_trip(small, tmp_path: Path) -> None:
    _, clf = small
    path = tmp_path / "model.keras"
    clf.serve_model.save(path)
    again = keras.models.load_model(path)
    x = np.random.default_rng(3).integers(0, 256, (2, 64, 64, 1), dtype=np.uint8)
    a, b = clf.serve_model.predict_on_batch(x), again.predict_on_batch(x)
    np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=1e-6)
    np.testing.assert_allclose(a["cam"], b["cam"], atol=1e-5)


def test_unfreeze_counts_layers_from_the_end_and_keeps_batchnorm_frozen(small) -> None:
    _, clf = small
    assert set_trainable(clf, 0) == 0
    assert not any(layer.trainable for layer in clf.backbone.layers)
    n = set_trainable(clf, 12)
    tail = clf.backbone.layers[-12:]
    assert n == sum(
        1 for layer in tail if layer.weights and not isinstance(layer, layers.BatchNormalization)
    )
    assert all(not layer.trainable for layer in clf.backbone.layers[:-12])
    assert all(
        not layer.trainable for layer in tail if isinstance(layer, layers.BatchNormalization)
    )
    assert any(layer.trainable for layer in tail if isinstance(layer, layers.Conv2D))
    everything = set_trainable(clf, -1)
    assert everything == sum(
        1
        for layer in clf.backbone.layers
        if layer.weights and not isinstance(layer, layers.BatchNormalization)
    )


def test_backbone_names() -> None:
    assert set(BACKBONES) == {
        "densenet121",
        "densenet169",
        "densenet201",
        "vgg16",
        "vgg19",
        "resnet101",
        "resnet152",
    }
    with pytest.raises(ModelError, match=r"densenet161.*Keras has no DenseNet161.*densenet201"):
        check_backbone("densenet161")


@pytest.mark.parametrize("backbone", ["vgg16", "resnet101"])
def test_other_backbones_build(backbone: str) -> None:
    clf = build_classifier(ModelSpec(image_size=32, backbone=backbone), weights=None)
    out = clf.serve_model.predict_on_batch(np.zeros((1, 32, 32, 1), np.uint8))
    assert out["probabilities"].shape == (1, 3)


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such file"):
        build_classifier(
            ModelSpec(image_size=32, backbone="densenet121"),
            weights=str(tmp_path / "nope.weights.h5"),
        )


def test_local_backbone_weights_are_loaded(tmp_path: Path) -> None:
    spec = ModelSpec(image_size=32, backbone="densenet121")
    keras.utils.set_random_seed(7)
    donor = build_classifier(spec, weights=None)
    path = tmp_path / "backbone.weights.h5"
    donor.backbone.save_weights(path)
    keras.utils.set_random_seed(8)
    other = build_classifier(spec, weights=str(path))
    for a, b in zip(donor.backbone.weights, other.backbone.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
