"""One series: every slice classified concurrently, then summarised by one stated rule."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from fastapi import APIRouter, Request

from gateway.deps import request_id, state_of
from gateway.errors import (
    BadRequest,
    GatewayError,
    PayloadTooLarge,
    UnsupportedMediaType,
    UnusableSlice,
)
from gateway.routes.predict import predict_one
from gateway.schemas import Prediction, SliceResult, StudyPrediction, StudySummary, Timings
from gateway.uploads import read_study

router = APIRouter()

STUDY_RULE = "mean of the slice probabilities over the usable slices; the study label is its argmax"


@router.post("/v1/predict/study", response_model=StudyPrediction, response_model_exclude_none=True)
async def predict_study(request: Request) -> StudyPrediction:
    """Classify every slice of one series concurrently (Triton batches them) and summarise."""
    gw = state_of(request)
    started = time.perf_counter()
    async with gw.slot():
        items = await read_study(
            request,
            gw.settings.max_study_slices,
            gw.settings.max_study_bytes,
            gw.settings.max_upload_bytes,
        )
        async with gw.serving.use() as (version, spec):  # every slice by the same version

            async def one(data: bytes) -> Prediction | GatewayError:
                try:
                    return await predict_one(request, data, False, version, spec)
                except (BadRequest, PayloadTooLarge, UnsupportedMediaType, UnusableSlice) as e:
                    return e  # a bad slice is reported in place; the study goes on

            results = await asyncio.gather(*(one(data) for _, data in items))
    slices, usable = [], []
    for (name, _), result in zip(items, results, strict=True):
        if isinstance(result, GatewayError):
            slices.append(
                SliceResult(
                    name=name,
                    error={"status": result.status, "title": result.title, "detail": str(result)},
                )
            )
        else:
            slices.append(SliceResult(name=name, prediction=result))
            usable.append(result)
    if not usable:
        raise UnusableSlice(f"none of the {len(items)} slices could be used")
    mean = np.mean([[p.probabilities[n] for n in spec.class_names] for p in usable], axis=0)
    index = int(np.argmax(mean))
    counts = {n: sum(p.label == n for p in usable) for n in spec.class_names}
    elapsed = round((time.perf_counter() - started) * 1000, 2)
    return StudyPrediction(
        summary=StudySummary(
            rule=STUDY_RULE,
            label=spec.class_names[index],
            class_index=index,
            probabilities=dict(zip(spec.class_names, map(float, mean), strict=True)),
            slices_used=len(usable),
            slices_rejected=len(items) - len(usable),
            label_counts=counts,
        ),
        slices=slices,
        model=usable[0].model,
        request_id=request_id(request),
        intended_use=spec.intended_use(),
        demo=spec.provenance.synthetic,
        timings=Timings(
            preprocess_ms=sum(p.timings.preprocess_ms for p in usable),
            inference_ms=max(p.timings.inference_ms for p in usable),
            total_ms=elapsed,
        ),
    )
