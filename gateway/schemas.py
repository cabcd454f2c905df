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


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    request_id: str
