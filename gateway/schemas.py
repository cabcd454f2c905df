"""Typed responses of the gateway."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ModelInfo(BaseModel):
    name: str
    version: str


class PreprocessingInfo(BaseModel):
    source: str = Field(description="png, jpeg or dicom (sniffed from the bytes)")
    original_shape: list[int]
    box: list[int] = Field(description="body box used, [xmin, ymin, xmax, ymax], max exclusive")
    window: list[float] = Field(description="CT window [centre, width] in HU")
    size: int


class Timings(BaseModel):
    preprocess_ms: float
    inference_ms: float
    total_ms: float


class Prediction(BaseModel):
    label: str
    class_index: int
    probabilities: dict[str, float]
    model: ModelInfo
    preprocessing: PreprocessingInfo
    timings: Timings
    request_id: str
    intended_use: str
    demo: bool = Field(description="true when the model was trained on synthetic data")
    heatmap: str | None = Field(
        default=None, description="PNG (base64) of the predicted class's CAM over the slice"
    )


class SliceResult(BaseModel):
    name: str
    prediction: Prediction | None = None
    error: dict[str, str | int] | None = Field(
        default=None, description="problem details when this slice could not be used"
    )


class StudySummary(BaseModel):
    rule: str
    label: str
    class_index: int
    probabilities: dict[str, float]
    slices_used: int
    slices_rejected: int
    label_counts: dict[str, int]


class StudyPrediction(BaseModel):
    summary: StudySummary
    slices: list[SliceResult]
    model: ModelInfo
    request_id: str
    intended_use: str
    demo: bool
    timings: Timings


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    request_id: str
