"""One exception tree for the gateway, mapped to HTTP statuses in one handler.

Every error answer is JSON problem details (RFC 9457): ``type``, ``title``, ``status``,
``detail`` and the request id. Bad input is never a 500.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import ClassVar

from covidct import preprocessing as pp
from covidct.errors import CovidctError


class GatewayError(CovidctError):
    """Base: ``status`` and ``title`` name the HTTP answer, the message is the detail."""

    status = 500
    title = "Internal error"

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.headers = headers or {}


class BadRequest(GatewayError):
    status, title = 400, "Malformed request"


class Unauthorized(GatewayError):
    status, title = 401, "Missing or wrong API key"


class AdminUnauthorized(GatewayError):
    status, title = 401, "Missing or wrong admin key"


class AdminDisabled(GatewayError):
    status, title = 403, "Admin endpoints disabled"


class NotFound(GatewayError):
    status, title = 404, "Not found"


class VersionConflict(GatewayError):
    status, title = 409, "Version cannot be served"


class RequestTimeout(GatewayError):
    status, title = 408, "Body not sent in time"


class PayloadTooLarge(GatewayError):
    status, title = 413, "Upload too large"


class StudyTooLarge(PayloadTooLarge):
    """The study as a whole passed a cap: ends the study, unlike one slice's own fault."""


class HeadersTooLarge(GatewayError):
    status, title = 431, "Request headers too large"


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


class HTTPProblem(GatewayError):
    """An HTTP error raised by the framework (unknown route, wrong method, unparsable body),
    answered in the same problem format and our own words."""

    WORDS: ClassVar[dict[int, str]] = {
        400: "the request body could not be parsed",
        404: "no such route; the API is described at /docs",
        405: "this route does not take that method",
    }

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        phrase = HTTPStatus(status).phrase if status in set(HTTPStatus) else "Error"
        super().__init__(self.WORDS.get(status, phrase.lower()), headers)
        self.status, self.title = status, phrase


def problem_body(error: GatewayError, request_id: str) -> dict[str, object]:
    """The problem-details document for ``error``: the one shape of every error answer."""
    return {
        "type": f"https://covidct.example/problems/{type(error).__name__}",
        "title": error.title,
        "status": error.status,
        "detail": str(error),
        "request_id": request_id,
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
