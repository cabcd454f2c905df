"""One series: every slice classified concurrently, then summarised by one stated rule."""

from __future__ import annotations

import asyncio
import io
import time
import zipfile

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
from gateway.routes.predict import predict_one, read_upload
from gateway.schemas import Prediction, SliceResult, StudyPrediction, StudySummary, Timings

router = APIRouter()

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
