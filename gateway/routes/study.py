"""One series: every slice classified concurrently, then summarised by one stated rule."""

from __future__ import annotations

import time

import anyio
import numpy as np
from fastapi import APIRouter, Request

from covidct.config import ModelSpec
from gateway.deps import request_id, state_of
from gateway.errors import (
    BadRequest,
    GatewayError,
    PayloadTooLarge,
    StudyTooLarge,
    UnsupportedMediaType,
    UnusableSlice,
)
from gateway.routes.predict import predict_one
from gateway.schemas import (
    PREDICTION_ERRORS,
    STUDY_BODY,
    Prediction,
    SliceResult,
    StudyPrediction,
    StudySummary,
    Timings,
)
from gateway.uploads import StudySlice, open_study

router = APIRouter()

#: Errors that are one slice's own fault: reported in place, the study goes on.
SLICE_FAULTS = (BadRequest, PayloadTooLarge, UnsupportedMediaType, UnusableSlice)


async def _run_slices(
    request: Request, slices: list[StudySlice], width: int, version: str, spec: ModelSpec
) -> list[Prediction | GatewayError]:
    """Every slice read (worker thread) and through ``predict_one``, ``width`` at a time. A
    slice's own fault is its answer; any other error (the study past its cap, Triton down, a
    timeout) cancels the rest and is raised."""
    results: list[Prediction | GatewayError | None] = [None] * len(slices)
    limiter = anyio.CapacityLimiter(width)
    workers = state_of(request).limiter

    async def one(index: int) -> None:
        async with limiter:
            try:
                data = await anyio.to_thread.run_sync(slices[index].read, limiter=workers)
                results[index] = await predict_one(request, data, False, version, spec)
            except StudyTooLarge:
                raise
            except SLICE_FAULTS as e:
                results[index] = e

    try:
        async with anyio.create_task_group() as group:
            for index in range(len(slices)):
                group.start_soon(one, index)
    except BaseExceptionGroup as group_error:
        raise _first_error(group_error) from None
    return [r for r in results if r is not None]


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The error that stopped the study (not the cancellations it caused)."""
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            return _first_error(error)
        if not isinstance(error, anyio.get_cancelled_exc_class()):
            return error
    return group.exceptions[0]


@router.post(
    "/v1/predict/study",
    response_model=StudyPrediction,
    response_model_exclude_none=True,
    responses=PREDICTION_ERRORS,
    openapi_extra=STUDY_BODY,
)
async def predict_study(request: Request) -> StudyPrediction:
    """Classify every slice of one series concurrently (Triton batches them) and summarise."""
    gw = state_of(request)
    started = time.perf_counter()
    settings = gw.settings
    # Reading the body holds one slot (and one of the study slots that bound the spool).
    async with (
        gw.study_slot(),
        gw.slot(),
        open_study(
            request, settings.max_study_slices, settings.max_study_bytes, settings.max_upload_bytes
        ) as items,
    ):
        width = max(1, min(settings.study_concurrency, len(items), settings.max_in_flight))
        # The study's slices run ``width`` at a time, each counted in flight, all by one version;
        # the task group returns only when every slice is done or cancelled, so nothing of the
        # study outlives its count (a redeploy's drain waits for all of it).
        async with gw.slot(width - 1), gw.serving.use() as (version, spec):
            results = await _run_slices(request, items, width, version, spec)
    slices, usable = [], []
    for item, result in zip(items, results, strict=True):
        name = item.name
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
        first = next(s for s in slices if s.error is not None)
        raise UnusableSlice(
            f"none of the {len(items)} slices could be used; the first, {first.name!r}: "
            f"{first.error['detail'] if first.error else ''}"
        )
    probs = np.array([[p.probabilities[n] for n in spec.class_names] for p in usable])
    rule = spec.series_rule
    index = rule.verdict(probs)
    counts = {n: sum(p.label == n for p in usable) for n in spec.class_names}
    elapsed = round((time.perf_counter() - started) * 1000, 2)
    return StudyPrediction(
        summary=StudySummary(
            rule=f"{rule.name}: {rule.describe()} (over the usable slices)",
            rule_name=rule.name,
            label=spec.class_names[index],
            class_index=index,
            probabilities=dict(zip(spec.class_names, map(float, probs.mean(axis=0)), strict=True)),
            scores=dict(zip(spec.class_names, map(float, rule.scores(probs)), strict=True)),
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
