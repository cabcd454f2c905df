"""Typed responses of the gateway."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

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
    rule: str = Field(description="the model's series rule (its ModelSpec), in words")
    rule_name: str = Field(description="the rule's short name: mean, top-5-mean, max, count-3@0.7")
    label: str = Field(description="the series verdict, made by the rule")
    class_index: int
    probabilities: dict[str, float] = Field(
        description="mean of the usable slices' probabilities, whatever the rule"
    )
    scores: dict[str, float] = Field(
        description="the per-class statistic the rule reads its verdict from"
    )
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


class Readiness(BaseModel):
    status: str = Field(description="ready, or not ready")


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses, each answered as problem details (RFC 9457)."""
    return {
        status: {
            "model": Problem,
            "description": HTTPStatus(status).phrase,
            "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            },
        }
        for status in statuses
    }


#: What any route can answer before it runs: a bad or oversized body or head (gateway.limits).
ANY_ROUTE = problems(400, 408, 413, 431)
#: What a prediction can answer besides 200.
PREDICTION_ERRORS = problems(401, 415, 422, 502, 503, 504)


def binary(description: str) -> dict[str, Any]:
    return {"type": "string", "format": "binary", "description": description}


def multipart(**schema: Any) -> dict[str, Any]:
    return {"multipart/form-data": {"schema": {"type": "object", **schema}}}


#: The request body of /v1/predict, for the OpenAPI document (the route reads it itself).
SLICE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            **multipart(
                properties={"file": binary("one slice: PNG, JPEG or DICOM")}, required=["file"]
            ),
            **{
                media: {"schema": binary("one slice, the bytes as the body")}
                for media in (
                    "application/octet-stream",
                    "image/png",
                    "image/jpeg",
                    "application/dicom",
                )
            },
        },
    }
}
#: The request body of /v1/predict/study.
STUDY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            **multipart(additionalProperties=binary("one slice per file, any field name")),
            "application/zip": {"schema": binary("one zip of the slices (stored or deflate)")},
        },
    }
}
