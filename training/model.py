"""The classifier built from a ModelSpec: uint8 grey in, probabilities and CAM out.

Graph::

    image uint8 [N, S, S, 1]
      -> BackboneInput: cast, grey to 3 channels, the backbone's own normalisation
      -> backbone (keras.applications, include_top=False), BatchNorm always in inference mode
      -> features [N, h, w, C]
      -> CAMHead: logits = dropout(mean_hw(features)) @ W + b ;  cam = features @ W
      -> TemperatureSoftmax: probabilities = softmax(logits / T)

Because the head is linear, ``mean_hw(cam) + b == logits`` exactly (dropout is off at
inference): the heatmap costs no second pass and uses the very weights of the answer.
Everything numeric lives in the graph, so the exported model is self-contained.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from covidct.config import ModelSpec
from covidct.errors import CovidctError

# ImageNet statistics of the two normalisation modes keras.applications uses.
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


SCRATCH_BN_MOMENTUM = 0.9


@dataclass(frozen=True)
class Backbone:
    constructor: Callable[..., keras.Model]
    normalisation: str  # "torch" (DenseNet) or "caffe" (VGG, ResNet)


BACKBONES: dict[str, Backbone] = {
    "densenet121": Backbone(keras.applications.DenseNet121, "torch"),
    "densenet169": Backbone(keras.applications.DenseNet169, "torch"),
    "densenet201": Backbone(keras.applications.DenseNet201, "torch"),
    "vgg16": Backbone(keras.applications.VGG16, "caffe"),
    "vgg19": Backbone(keras.applications.VGG19, "caffe"),
    "resnet101": Backbone(keras.applications.ResNet101, "caffe"),
    "resnet152": Backbone(keras.applications.ResNet152, "caffe"),
}


class ModelError(CovidctError, ValueError):
    """A model cannot be built as asked; the message names the alternatives."""


def check_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        hint = " (Keras has no DenseNet161)" if name == "densenet161" else ""
        raise ModelError(
            f"unknown backbone {name!r}{hint}; choose one of {', '.join(BACKBONES)}"
        ) from None


@keras.saving.register_keras_serializable(package="covidct")
class BackboneInput(layers.Layer):
    """uint8 grey ``[N, S, S, 1]`` to the backbone's normalised float ``[N, S, S, 3]``."""

    def __init__(self, normalisation: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if normalisation not in ("torch", "caffe"):
            raise ModelError(f"unknown normalisation {normalisation!r}")
        self.normalisation = normalisation

    def call(self, x: Any) -> Any:
        x = ops.cast(x, self.compute_dtype)
        rgb = ops.concatenate([x, x, x], axis=-1)
        if self.normalisation == "torch":
            mean = ops.convert_to_tensor(np.array(_TORCH_MEAN) * 255.0, self.compute_dtype)
            std = ops.convert_to_tensor(np.array(_TORCH_STD) * 255.0, self.compute_dtype)
            return (rgb - mean) / std
        # caffe: BGR order, mean subtracted, no scaling; grey makes the swap a no-op on pixels.
        mean = ops.convert_to_tensor(np.array(_CAFFE_MEAN_BGR), self.compute_dtype)
        return rgb - mean

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape[:-1], 3)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "normalisation": self.normalisation}


@keras.saving.register_keras_serializable(package="covidct")
class CAMHead(layers.Layer):
    """Linear classifier on pooled features that also returns class activation maps."""

    def __init__(self, num_classes: int, dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.dropout_rate = dropout
        self.dropout = layers.Dropout(dropout)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = int(input_shape[-1])  # type: ignore[arg-type]
        self.kernel = self.add_weight(
            name="kernel", shape=(channels, self.num_classes), initializer="glorot_uniform"
        )
        self.bias = self.add_weight(name="bias", shape=(self.num_classes,), initializer="zeros")

    def call(self, features: Any, training: bool | None = None) -> tuple[Any, Any]:
        features = ops.cast(features, "float32")
        pooled = self.dropout(ops.mean(features, axis=(1, 2)), training=training)
        logits = ops.matmul(pooled, self.kernel) + self.bias
        cam = ops.einsum("nhwc,ck->nhwk", features, self.kernel)
        return logits, cam

    def compute_output_shape(
        self, input_shape: tuple[int | None, ...]
    ) -> tuple[tuple[int | None, ...], tuple[int | None, ...]]:
        n, h, w, _ = input_shape
        return (n, self.num_classes), (n, h, w, self.num_classes)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "dropout": self.dropout_rate,
        }


@keras.saving.register_keras_serializable(package="covidct")
class TemperatureSoftmax(layers.Layer):
    """softmax(logits / T); T is a non-trainable weight so calibration can set it."""

    def __init__(self, temperature: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.initial_temperature = float(temperature)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.temperature = self.add_weight(
            name="temperature",
            shape=(),
            initializer=keras.initializers.Constant(self.initial_temperature),
            trainable=False,
        )

    def call(self, logits: Any) -> Any:
        return ops.softmax(ops.cast(logits, "float32") / self.temperature, axis=-1)

    def set_temperature(self, value: float) -> None:
        self.temperature.assign(float(value))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "temperature": self.initial_temperature}


@dataclass
class Classifier:
    """The two views of one set of weights.

    Attributes:
        train_model: image -> probabilities (what ``fit`` optimises).
        serve_model: image -> {"probabilities", "cam"} (what is exported).
        backbone: the keras.applications model inside both.
        softmax: the temperature layer (calibration sets it).
    """

    train_model: keras.Model
    serve_model: keras.Model
    backbone: keras.Model
    softmax: TemperatureSoftmax


def build_classifier(
    spec: ModelSpec, weights: str | None = None, dropout: float = 0.3
) -> Classifier:
    """Build the classifier a ModelSpec describes.

    Args:
        spec: size, tensor names, backbone, temperature.
        weights: "imagenet", None / "none" (random), or a path to a ``.weights.h5`` file
            holding the backbone's weights.
        dropout: dropout rate on the pooled features during training.
    """
    bb = check_backbone(spec.backbone)
    local_weights = None
    if weights in (None, "none"):
        keras_weights = None
    elif weights == "imagenet":
        keras_weights = "imagenet"
    else:
        local_weights = Path(str(weights))
        if not local_weights.is_file():
            raise ModelError(f"--weights {weights}: no such file (use imagenet, none or a path)")
        keras_weights = None
    s = spec.image_size
    image = keras.Input(shape=(s, s, 1), dtype="uint8", name=spec.input_name)
    x = BackboneInput(bb.normalisation, name="backbone_input")(image)
    backbone = bb.constructor(include_top=False, weights=keras_weights, input_shape=(s, s, 3))
    if local_weights is not None:
        backbone.load_weights(local_weights)
    if keras_weights is None and local_weights is None:
        # From scratch there is nothing to fine-tune: BatchNorm must learn its statistics,
        # and with few steps per epoch the default momentum (0.99) lags far behind them.
        for layer in backbone.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = SCRATCH_BN_MOMENTUM
        features = backbone(x)
    else:
        # Pretrained: BatchNorm stays in inference mode even where layers are unfrozen.
        features = backbone(x, training=False)
    logits, cam = CAMHead(spec.num_classes, dropout, name="cam_head")(features)
    probabilities = TemperatureSoftmax(spec.temperature, name=spec.probabilities_name)(logits)
    cam = layers.Identity(name=spec.cam_name, dtype="float32")(cam)
    train_model = keras.Model(image, probabilities, name=f"{spec.name}_train")
    serve_model = keras.Model(
        image, {spec.probabilities_name: probabilities, spec.cam_name: cam}, name=spec.name
    )
    softmax = serve_model.get_layer(spec.probabilities_name)
    assert isinstance(softmax, TemperatureSoftmax)
    return Classifier(train_model, serve_model, backbone, softmax)


def set_trainable(clf: Classifier, unfreeze: int) -> int:
    """Freeze the backbone, then unfreeze its last ``unfreeze`` layers except BatchNorm.

    ``unfreeze`` counts entries of ``backbone.layers`` from the end, every layer type
    included (convolutions, BatchNorm, activations, concatenations, pooling); 0 trains the
    head only, -1 unfreezes the whole backbone. BatchNormalization layers always stay
    frozen. Returns the number of backbone layers with weights that are now trainable.
    """
    clf.backbone.trainable = True
    chosen = (
        clf.backbone.layers
        if unfreeze < 0
        else (clf.backbone.layers[-unfreeze:] if unfreeze else [])
    )
    chosen_ids = {id(layer) for layer in chosen}
    count = 0
    for layer in clf.backbone.layers:
        layer.trainable = id(layer) in chosen_ids and not isinstance(
            layer, layers.BatchNormalization
        )
        count += bool(layer.trainable and layer.weights)
    return count
