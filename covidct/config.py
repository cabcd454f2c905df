"""The contract shared by training, export and serving: ModelSpec (docs/design.md, "Contracts").

A ModelSpec is saved as ``model_spec.json`` beside every trained and exported model.
Nobody hard-codes the image size, class names or tensor names elsewhere: they read this.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covidct.errors import CovidctError
from covidct.series import SeriesRule, SeriesRuleError

#: COVIDx-CT class order (Normal=0, Pneumonia=1, COVID-19=2). Never reorder.
CLASS_NAMES: tuple[str, ...] = ("Normal", "Pneumonia", "COVID-19")

#: The COVIDx-CT lung window in Hounsfield units.
WINDOW_CENTRE_HU = -600.0
WINDOW_WIDTH_HU = 1500.0

#: Crop policies: the label box while training, the automatic body box while serving.
CROP_POLICIES = ("label-box-or-auto-body",)

#: Resize interpolation used by covidct.preprocessing; recorded so a client can check it.
INTERPOLATION = "bilinear-antialiased"

#: The Triton model name a trained model is exported and served under unless told otherwise.
DEFAULT_MODEL_NAME = "covidct"

#: The model input size S of a ModelSpec and of ``covidct train`` unless told otherwise: the
#: one definition every default of the project refers to.
DEFAULT_IMAGE_SIZE = 224
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 1024
SCHEMA_VERSION = 1


NOT_A_MEDICAL_DEVICE = (
    "Not a medical device: for research only. It must not be used to diagnose, treat or "
    "triage patients."
)
SYNTHETIC_DATA_NOTE = "Trained on synthetic data: its outputs say nothing about real patients."


class SpecError(CovidctError, ValueError):
    """A ModelSpec (or its JSON file) is invalid; the message says which field and why."""


def _refuse_unknown(kind: type, data: dict[str, Any], what: str) -> None:
    """A typo must not pass silently: refuse keys that are not fields of dataclass ``kind``.

    Raises:
        SpecError: naming ``what`` and every unknown key.
    """
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(kind)})
    if unknown:
        raise SpecError(f"unknown {what} field(s): {', '.join(unknown)}")


@dataclass(frozen=True)
class Provenance:
    """Where a model came from.

    Attributes:
        data_fingerprint: sha256 over the split label files the model was trained on.
        synthetic: True when the training data was synthetic (a demo model). Every card and
            prediction of such a model says so.
        source_run: the training run directory, when known.
    """

    data_fingerprint: str = ""
    synthetic: bool = False
    source_run: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """Everything a consumer needs to feed a model and read its answer.

    Attributes:
        name: model name (also the Triton model name).
        class_names: output order of ``probabilities``; must be the COVIDx-CT order.
        image_size: S, the model input is ``[N, S, S, 1]``.
        input_name / input_dtype: the single input tensor (uint8 grey after crop and resize).
        probabilities_name / cam_name: the two outputs (``[N, 3]`` and ``[N, h, w, 3]``).
        output_dtype: dtype of both outputs.
        window_centre / window_width: CT window (HU) applied to DICOM before anything else.
        crop_policy: how the body box is chosen (label box in training, automatic at serving).
        interpolation: resize interpolation of the preprocessing.
        backbone: Keras backbone name.
        temperature: calibration temperature (1.0 means uncalibrated).
        series_rule: how a series' slice probabilities become its verdict (covidct/series.py;
            chosen on the validation split at training, ``mean`` for older specs).
        provenance: data fingerprint and synthetic flag.
    """

    name: str = DEFAULT_MODEL_NAME
    class_names: tuple[str, ...] = CLASS_NAMES
    image_size: int = DEFAULT_IMAGE_SIZE
    input_name: str = "image"
    input_dtype: str = "UINT8"
    probabilities_name: str = "probabilities"
    cam_name: str = "cam"
    output_dtype: str = "FP32"
    window_centre: float = WINDOW_CENTRE_HU
    window_width: float = WINDOW_WIDTH_HU
    crop_policy: str = CROP_POLICIES[0]
    interpolation: str = INTERPOLATION
    backbone: str = "densenet201"
    temperature: float = 1.0
    series_rule: SeriesRule = field(default_factory=SeriesRule)
    provenance: Provenance = field(default_factory=Provenance)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        # JSON gives lists; the dataclass is frozen and hashable with tuples.
        object.__setattr__(self, "class_names", tuple(self.class_names))
        self._validate()

    def _validate(self) -> None:
        if not self.name or not all(c.isalnum() or c in "_-." for c in self.name):
            raise SpecError(f"name {self.name!r}: use letters, digits, '_', '-' or '.'")
        if self.class_names != CLASS_NAMES:
            raise SpecError(
                f"class_names {list(self.class_names)} must be exactly {list(CLASS_NAMES)} "
                "(the COVIDx-CT order Normal=0, Pneumonia=1, COVID-19=2)"
            )
        if (
            isinstance(self.image_size, bool)
            or not isinstance(self.image_size, int)
            or not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE
        ):
            raise SpecError(
                f"image_size {self.image_size!r} must be an integer in "
                f"[{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}]"
            )
        if self.input_dtype != "UINT8":
            raise SpecError(f"input_dtype {self.input_dtype!r}: the model input is UINT8")
        if self.output_dtype not in ("FP32", "FP16"):
            raise SpecError(f"output_dtype {self.output_dtype!r} must be FP32 or FP16")
        names = [self.input_name, self.probabilities_name, self.cam_name]
        if len(set(names)) != 3 or not all(names):
            raise SpecError(f"tensor names must be distinct and non-empty, got {names}")
        if not self.window_width > 0:
            raise SpecError(f"window_width {self.window_width} must be positive")
        if self.crop_policy not in CROP_POLICIES:
            raise SpecError(f"crop_policy {self.crop_policy!r} must be one of {CROP_POLICIES}")
        if self.interpolation != INTERPOLATION:
            raise SpecError(
                f"interpolation {self.interpolation!r}: the preprocessing implements only "
                f"{INTERPOLATION!r}"
            )
        if not self.temperature > 0:
            raise SpecError(f"temperature {self.temperature} must be positive")
        if not isinstance(self.series_rule, SeriesRule):
            raise SpecError(f"series_rule must be a SeriesRule, got {self.series_rule!r}")
        if self.schema_version != SCHEMA_VERSION:
            raise SpecError(
                f"schema_version {self.schema_version} is not supported (expected {SCHEMA_VERSION})"
            )

    def intended_use(self) -> str:
        """The note every model card and every served prediction carries."""
        note = (
            "Research classifier of axial chest CT slices into Normal, Pneumonia and COVID-19. "
            + NOT_A_MEDICAL_DEVICE
        )
        return f"{note} {SYNTHETIC_DATA_NOTE}" if self.provenance.synthetic else note

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def window(self) -> tuple[float, float]:
        """(centre, width) of the CT window in HU."""
        return (self.window_centre, self.window_width)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["class_names"] = list(self.class_names)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON: names exactly this contract (results cite it)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Build a spec from a dict, rejecting unknown keys (a typo must not pass silently)."""
        if not isinstance(data, dict):
            raise SpecError(f"a ModelSpec must be a JSON object, got {type(data).__name__}")
        _refuse_unknown(cls, data, "ModelSpec")
        data = dict(data)
        prov = data.get("provenance", {})
        if isinstance(prov, dict):
            _refuse_unknown(Provenance, prov, "provenance")
            data["provenance"] = Provenance(**prov)
        rule = data.get("series_rule", {})
        if isinstance(rule, dict):
            _refuse_unknown(SeriesRule, rule, "series_rule")
            try:
                data["series_rule"] = SeriesRule(**rule)
            except SeriesRuleError as e:
                raise SpecError(str(e)) from e
        try:
            return cls(**data)
        except TypeError as e:
            raise SpecError(str(e)) from e

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"not valid JSON: {e}") from e
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> ModelSpec:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise SpecError(f"{path}: cannot read ModelSpec: {e.strerror}") from e
        try:
            return cls.from_json(text)
        except SpecError as e:
            raise SpecError(f"{path}: {e}") from e

    def save(self, path: str | Path) -> None:
        """Write the spec atomically (temporary file in the same folder, then rename)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        tmp.replace(path)


BALANCE_MODES = ("class-weights", "sampling", "none")
STRATEGIES = ("default", "mirrored", "multiworker")
AUTO_SPLITS = ("none", "patient", "slice")


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``covidct train`` was asked to do; saved as ``RUN/train_config.json``.

    Phases: with pretrained weights (``imagenet`` or a file), ``head_epochs`` train the head
    on a frozen backbone, then ``epochs`` fine-tune the last ``unfreeze`` backbone layers at
    ``fine_tune_learning_rate`` (BatchNorm frozen). With ``weights="none"`` there is nothing
    to fine-tune: one phase of ``epochs`` trains every layer, BatchNorm included.
    """

    backbone: str = "densenet201"
    image_size: int = DEFAULT_IMAGE_SIZE
    weights: str = "imagenet"
    unfreeze: int = 30
    head_epochs: int = 1
    epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-4
    dropout: float = 0.3
    augment: bool = True
    flip: bool = True
    rotation_degrees: float = 10.0
    zoom: float = 0.1
    shift: float = 0.05
    #: Intensity augmentation off by default: on real CT (covidxct-128, ``covidct bench
    #: quality``) the recipe without it scored higher on val in every seed measured; the
    #: window already fixes what a grey level means, and shifting it blurs that.
    brightness: float = 0.0
    contrast: float = 0.0
    #: Class-balanced sampling by default: on real CT, with intensity augmentation off, it
    #: scored higher on val than class weights in every seed measured (``covidct bench
    #: quality``, recipe ``sampling-no-intensity``).
    balance: str = "sampling"
    mixed_precision: bool = False
    strategy: str = "default"
    #: Workers of a multi-worker run (from TF_CONFIG): ``batch_size`` is per worker, the
    #: global batch ``batch_size x workers`` (written as ``global_batch_size``).
    workers: int = 1
    seed: int = 0
    patience: int = 3
    calibrate: bool = True
    auto_split: str = "none"
    model_name: str = DEFAULT_MODEL_NAME

    def __post_init__(self) -> None:
        if self.balance not in BALANCE_MODES:
            raise SpecError(f"balance {self.balance!r} must be one of {', '.join(BALANCE_MODES)}")
        if self.strategy not in STRATEGIES:
            raise SpecError(f"strategy {self.strategy!r} must be one of {', '.join(STRATEGIES)}")
        if self.auto_split not in AUTO_SPLITS:
            raise SpecError(f"auto_split {self.auto_split!r} must be one of {AUTO_SPLITS}")
        if not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:
            raise SpecError(
                f"image_size {self.image_size} must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}]"
            )
        for name in ("epochs", "batch_size", "workers"):
            if getattr(self, name) < 1:
                raise SpecError(f"{name} must be at least 1")
        if self.head_epochs < 0 or self.patience < 1:
            raise SpecError("head_epochs must be >= 0 and patience >= 1")
        if not (
            0 <= self.dropout < 1 and self.learning_rate > 0 and self.fine_tune_learning_rate > 0
        ):
            raise SpecError("dropout must be in [0, 1) and learning rates positive")
        if not 0 <= self.rotation_degrees <= 180:
            raise SpecError(f"rotation_degrees {self.rotation_degrees} must be in [0, 180]")
        for name in ("zoom", "shift", "brightness", "contrast"):
            if not 0 <= getattr(self, name) < 1:
                raise SpecError(f"{name} {getattr(self, name)} must be in [0, 1)")

    @property
    def pretrained(self) -> bool:
        return self.weights != "none"

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.workers

    def to_json(self) -> str:
        fields = dataclasses.asdict(self) | {"global_batch_size": self.global_batch_size}
        return json.dumps(fields, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        data = json.loads(text)
        data.pop("global_batch_size", None)  # derived, written for readers
        _refuse_unknown(cls, data, "TrainConfig")
        return cls(**data)
