"""One exception tree for the gateway, mapped to HTTP statuses in one handler.

Every error answer is JSON problem details (RFC 9457): ``type``, ``title``, ``status``,
``detail`` and the request id. Bad input is never a 500.
"""

from __future__ import annotations

from typing import ClassVar

from covidct import preprocessing as pp

# The generic part lives in covidct.problems (the DICOM node's HTTP port answers the same way);
# re-exported here, so the gateway has one module of errors.
from covidct.problems import BadRequest as BadRequest
from covidct.problems import HeadersTooLarge as HeadersTooLarge
from covidct.problems import HttpError as GatewayError
from covidct.problems import HTTPProblem as _HTTPProblem
from covidct.problems import PayloadTooLarge as PayloadTooLarge
from covidct.problems import RequestTimeout as RequestTimeout
from covidct.problems import problem_body as problem_body


class Unauthorized(GatewayError):
    status, title = 401, "Missing or wrong API key"


class AdminUnauthorized(GatewayError):
    status, title = 401, "Missing or wrong admin key"


class AdminDisabled(GatewayError):
    status, title = 403, "Admin endpoints disabled"


class VersionConflict(GatewayError):
    status, title = 409, "Version cannot be served"


class StudyTooLarge(PayloadTooLarge):
    """The study as a whole passed a cap: ends the study, unlike one slice's own fault."""


class UnsupportedMediaType(GatewayError):
    status, title = 415, "Unsupported image format"


class UnusableSlice(GatewayError):
    status, title = 422, "Not a usable CT slice"


class Saturated(GatewayError):
    status, title = 503, "Too many requests in flight"

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail, {"Retry-After": str(retry_after_s)})


class NotReady(GatewayError):
    status, title = 503, "Model not ready"


class InferenceTimeout(GatewayError):
    status, title = 504, "Inference timed out"


class InferenceError(GatewayError):
    status, title = 502, "Inference server error"


class HTTPProblem(_HTTPProblem):
    """The framework's errors in problem format; a 404 points at the API's description."""

    WORDS: ClassVar[dict[int, str]] = {
        **_HTTPProblem.WORDS,
        404: "no such route; the API is described at /docs",
    }


# Preprocessing errors are the input's fault: each maps to a 4xx.
PREPROCESSING_MAP: list[tuple[type[pp.PreprocessingError], type[GatewayError]]] = [
    (pp.EmptyInputError, BadRequest),
    (pp.CorruptImageError, BadRequest),
    (pp.InvalidBoxError, BadRequest),
    (pp.InputTooLargeError, PayloadTooLarge),
    (pp.UnsupportedFormatError, UnsupportedMediaType),
    (pp.UnusableSliceError, UnusableSlice),
]


def from_preprocessing(error: pp.PreprocessingError) -> GatewayError:
    for source, target in PREPROCESSING_MAP:
        if isinstance(error, source):
            return target(str(error))
    return BadRequest(str(error))
