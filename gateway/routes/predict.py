"""One slice: read the upload, preprocess off the event loop, ask Triton, answer typed."""

from __future__ import annotations

import logging
import time

import anyio
import numpy as np
from fastapi import APIRouter, Query, Request, Response

from covidct.config import ModelSpec
from covidct.preprocessing import (
    NATIVE,
    Preprocessed,
    PreprocessingError,
    grey8_png_pixels,
    preprocess_bytes,
)
from gateway.deps import GatewayState, request_id, state_of
from gateway.errors import from_preprocessing
from gateway.heatmap import overlay_png
from gateway.schemas import (
    PREDICTION_ERRORS,
    SLICE_BODY,
    ModelInfo,
    Prediction,
    PreprocessingInfo,
    Timings,
)
from gateway.uploads import read_upload

log = logging.getLogger(__name__)
router = APIRouter()


def _preprocess(data: bytes, size: int) -> Preprocessed:
    try:
        return preprocess_bytes(data, size)
    except PreprocessingError as e:
        if e.__cause__ is not None:  # the library's words stay in the log
            log.info("preprocessing: %s (%s: %s)", e, type(e.__cause__).__name__, e.__cause__)
        raise from_preprocessing(e) from e


def _inline(gw: GatewayState, data: bytes) -> bool:
    """Whether to preprocess on the event loop: a small 8-bit grey PNG with the compiled
    kernels (see ``GatewaySettings.preprocess_inline_pixels``), unless the gateway is shedding
    load. While it answers 503s for saturation, the loop's time goes to answering them at once
    and the worker threads take the decoding: decoding on the loop would delay every 503
    behind it (``covidct bench overload``; RELIABILITY.md, Overload, has both figures)."""
    max_pixels = gw.settings.preprocess_inline_pixels
    if not (NATIVE and max_pixels) or gw.shedding():
        return False
    pixels = grey8_png_pixels(data)
    return pixels is not None and pixels <= max_pixels


async def predict_one(
    request: Request, data: bytes, heatmap: bool, version: str, spec: ModelSpec
) -> Prediction:
    """Preprocess (inline or a worker thread), infer (Triton ``version``), build the answer."""
    gw = state_of(request)
    started = time.perf_counter()
    if _inline(gw, data):
        result = _preprocess(data, spec.image_size)
    else:
        result = await anyio.to_thread.run_sync(
            _preprocess, data, spec.image_size, limiter=gw.limiter
        )
    t1 = time.perf_counter()
    inference = await gw.backend.infer(result.image[None], spec, version)
    t2 = time.perf_counter()
    gw.metrics.preprocess.observe(t1 - started)
    gw.metrics.inference.observe(t2 - t1)
    probs = inference.probabilities[0]
    index = int(np.argmax(probs))
    overlay = None
    if heatmap and result.decoded is not None:
        overlay = await anyio.to_thread.run_sync(
            overlay_png,
            result.decoded,
            inference.cam[0, :, :, index],
            result.box,
            limiter=gw.limiter,
        )
    return Prediction(
        label=spec.class_names[index],
        class_index=index,
        probabilities={n: float(p) for n, p in zip(spec.class_names, probs, strict=True)},
        model=ModelInfo(name=spec.name, version=inference.model_version),
        preprocessing=PreprocessingInfo(
            source=result.source,
            original_shape=list(result.original_shape),
            box=list(result.box),
            window=list(result.window),
            size=spec.image_size,
        ),
        timings=Timings(
            preprocess_ms=round((t1 - started) * 1000, 2),
            inference_ms=round((t2 - t1) * 1000, 2),
            total_ms=round((time.perf_counter() - started) * 1000, 2),
        ),
        request_id=request_id(request),
        intended_use=spec.intended_use(),
        demo=spec.provenance.synthetic,
        heatmap=overlay,
    )


@router.post(
    "/v1/predict",
    response_model=Prediction,
    response_model_exclude_none=True,
    responses=PREDICTION_ERRORS,
    openapi_extra=SLICE_BODY,
)
@router.post(
    "/predict", response_model=Prediction, response_model_exclude_none=True, include_in_schema=False
)
async def predict(request: Request, heatmap: bool = Query(False)) -> Response:
    """Classify one CT slice (PNG, JPEG or DICOM; multipart field ``file`` or raw body).

    The answer is serialised here by pydantic-core: ``response_model`` documents it, and FastAPI
    would otherwise validate the built model a second time before encoding it.
    """
    gw = state_of(request)
    started = time.perf_counter()
    async with gw.slot():
        data = await read_upload(request, gw.settings.max_upload_bytes)
        async with gw.serving.use() as (version, spec):  # one version serves the whole request
            answer = await predict_one(request, data, heatmap, version, spec)
    answer.timings.total_ms = round((time.perf_counter() - started) * 1000, 2)
    return Response(answer.model_dump_json(exclude_none=True), media_type="application/json")
