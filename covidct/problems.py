"""Errors answered as HTTP problem details (RFC 9457), shared by the project's HTTP services
(the gateway, the DICOM node's HTTP port): ``HttpError`` and the generic statuses, the one
document shape (``problem_body``), and the framework's own errors in the same shape
(``HTTPProblem``). Each service derives its own errors from ``HttpError`` and maps them in one
handler.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import ClassVar

from covidct.errors import CovidctError


class HttpError(CovidctError):
    """Base: ``status`` and ``title`` name the HTTP answer, the message is the detail."""

    status = 500
    title = "Internal error"

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.headers = headers or {}


class BadRequest(HttpError):
    status, title = 400, "Malformed request"


class NotFound(HttpError):
    status, title = 404, "Not found"


class RequestTimeout(HttpError):
    status, title = 408, "Body not sent in time"


class PayloadTooLarge(HttpError):
    status, title = 413, "Upload too large"


class HeadersTooLarge(HttpError):
    status, title = 431, "Request headers too large"


class HTTPProblem(HttpError):
    """An HTTP error raised by the framework (unknown route, wrong method, unparsable body),
    answered in the same problem format and our own words."""

    WORDS: ClassVar[dict[int, str]] = {
        400: "the request body could not be parsed",
        404: "no such route",
        405: "this route does not take that method",
    }

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        phrase = HTTPStatus(status).phrase if status in set(HTTPStatus) else "Error"
        super().__init__(self.WORDS.get(status, phrase.lower()), headers)
        self.status, self.title = status, phrase


def problem_body(error: HttpError, request_id: str) -> dict[str, object]:
    """The problem-details document for ``error``: the one shape of every error answer."""
    return {
        "type": f"https://covidct.example/problems/{type(error).__name__}",
        "title": error.title,
        "status": error.status,
        "detail": str(error),
        "request_id": request_id,
    }
