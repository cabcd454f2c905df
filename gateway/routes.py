"""Thin routes: read the upload, preprocess off the event loop, ask Triton, answer typed."""

from __future__ import annotations

import asyncio
import io
import time
import zipfile
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from covidct.config import ModelSpec
from covidct.preprocessing import Preprocessed, PreprocessingError, preprocess_bytes
from gateway.app import request_id, state_of
from gateway.errors import (
    BadRequest,
    GatewayError,
    NotReady,
    PayloadTooLarge,
    UnsupportedMediaType,
    UnusableSlice,
    from_preprocessing,
)
from gateway.heatmap import overlay_png
from gateway.schemas import (
    ModelInfo,
    Prediction,
    PreprocessingInfo,
    SliceResult,
    StudyPrediction,
    StudySummary,
    Timings,
)

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


async def _predict_one(
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
            answer = await _predict_one(request, data, heatmap, version, spec)
    answer.timings.total_ms = round((time.perf_counter() - started) * 1000, 2)
    return answer


STUDY_RULE = "mean of the slice probabilities over the usable slices; the study label is its argmax"


async def read_study(request: Request, max_slices: int, max_bytes: int) -> list[tuple[str, bytes]]:
    """Slices of one series: several multipart files (any field name), or one zip of them."""
    content_type = request.headers.get("content-type", "")
    items: list[tuple[str, bytes]] = []
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=max_slices + 1, max_fields=max_slices + 8)
        except Exception as e:  # malformed multipart bodies raise assorted parser errors
            raise BadRequest(f"malformed multipart body: {e}") from e
        total = 0
        for _, value in form.multi_items():
            if isinstance(value, str):
                continue
            data = await value.read(max_bytes + 1)
            total += len(data)
            if total > max_bytes:
                raise PayloadTooLarge(f"study exceeds {max_bytes} bytes")
            items.append((value.filename or f"slice-{len(items)}", data))
    else:
        items = [("upload", await read_upload(request, max_bytes))]
    if len(items) == 1 and items[0][1][:4] == b"PK\x03\x04":
        items = _unzip(items[0][1], max_slices, max_bytes)
    if not items:
        raise BadRequest("no slices: send files in a multipart body, or one zip")
    if len(items) > max_slices:
        raise PayloadTooLarge(f"{len(items)} slices; the limit is {max_slices}")
    return items


def _unzip(blob: bytes, max_slices: int, max_bytes: int) -> list[tuple[str, bytes]]:
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            if len(members) > max_slices:
                raise PayloadTooLarge(f"zip holds {len(members)} files; the limit is {max_slices}")
            if sum(m.file_size for m in members) > max_bytes:
                raise PayloadTooLarge(f"zip expands beyond {max_bytes} bytes")
            return [(m.filename, archive.read(m)) for m in members]
    except zipfile.BadZipFile as e:
        raise BadRequest(f"unreadable zip: {e}") from e


@router.post("/v1/predict/study", response_model=StudyPrediction, response_model_exclude_none=True)
async def predict_study(request: Request) -> StudyPrediction:
    """Classify every slice of one series concurrently (Triton batches them) and summarise."""
    gw = state_of(request)
    started = time.perf_counter()
    async with gw.slot():
        items = await read_study(request, gw.settings.max_study_slices, gw.settings.max_study_bytes)
        async with gw.serving.use() as (version, spec):  # every slice by the same version

            async def one(data: bytes) -> Prediction | GatewayError:
                try:
                    return await _predict_one(request, data, False, version, spec)
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


STATIC = Path(__file__).parent / "static"


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    """The web page: drop a slice, see the label, probabilities and heatmap."""
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Triton and the model are ready (and the ModelSpec was read)."""
    gw = state_of(request)
    try:
        version = await gw.serving.current()
        ready = await gw.backend.ready(version)
        if ready:
            await gw.serving.spec(version)
    except Exception:  # not ready is the answer, whatever the reason
        ready = False
    return JSONResponse(
        {"status": "ready" if ready else "not ready"}, status_code=200 if ready else 503
    )


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    """The served model, its versions and its ModelSpec."""
    gw = state_of(request)
    try:
        version = await gw.serving.current()
        spec = await gw.serving.spec(version)
    except Exception as e:
        raise NotReady(f"model spec not available: {e}") from e
    return {
        "name": spec.name,
        "serving_version": version,
        "versions": await gw.backend.versions(),
        "model_spec": spec.to_dict(),
        "intended_use": spec.intended_use(),
    }


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    return Response(
        generate_latest(state_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
