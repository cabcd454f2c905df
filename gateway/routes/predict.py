"""One slice: read the upload, preprocess off the event loop, ask Triton, answer typed."""

from __future__ import annotations

import time

import anyio
import numpy as np
from fastapi import APIRouter, Query, Request

from covidct.config import ModelSpec
from covidct.preprocessing import Preprocessed, PreprocessingError, preprocess_bytes
from gateway.deps import request_id, state_of
from gateway.errors import BadRequest, PayloadTooLarge, from_preprocessing
from gateway.heatmap import overlay_png
from gateway.schemas import ModelInfo, Prediction, PreprocessingInfo, Timings

router = APIRouter()


async def read_upload(request: Request, limit: int) -> bytes:
    """The slice's bytes: multipart field ``file``, or the raw body. 413 past ``limit``."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise PayloadTooLarge(f"upload of {declared} bytes; the limit is {limit}")
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=8)
        except Exception as e:  # malformed multipart bodies raise assorted parser errors
            raise BadRequest(f"malformed multipart body: {e}") from e
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise BadRequest("multipart upload needs one file in the field named 'file'")
        data = await upload.read(limit + 1)
    else:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"upload exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        data = b"".join(chunks)
    if len(data) > limit:
        raise PayloadTooLarge(f"upload exceeds the limit of {limit} bytes")
    return data


def _preprocess(data: bytes, size: int) -> Preprocessed:
    try:
        return preprocess_bytes(data, size)
    except PreprocessingError as e:
        raise from_preprocessing(e) from e


async def predict_one(
    request: Request, data: bytes, heatmap: bool, version: str, spec: ModelSpec
) -> Prediction:
    """Preprocess (worker thread), infer (Triton ``version``), build the typed answer."""
    gw = state_of(request)
    started = time.perf_counter()
    result = await anyio.to_thread.run_sync(_preprocess, data, spec.image_size, limiter=gw.limiter)
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


@router.post("/v1/predict", response_model=Prediction, response_model_exclude_none=True)
@router.post(
    "/predict", response_model=Prediction, response_model_exclude_none=True, include_in_schema=False
)
async def predict(request: Request, heatmap: bool = Query(False)) -> Prediction:
    """Classify one CT slice (PNG, JPEG or DICOM; multipart field ``file`` or raw body)."""
    gw = state_of(request)
    started = time.perf_counter()
    async with gw.slot():
        data = await read_upload(request, gw.settings.max_upload_bytes)
        async with gw.serving.use() as (version, spec):  # one version serves the whole request
            answer = await predict_one(request, data, heatmap, version, spec)
    answer.timings.total_ms = round((time.perf_counter() - started) * 1000, 2)
    return answer
