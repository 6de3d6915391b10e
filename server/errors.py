"""Errors the server answers with: each has an HTTP status and a one-line reason, sent as JSON.

Every error response body is ``{"error": "<short kind>", "detail": "<reason>"}``, with ``"problems"`` (a list of
``"<field>: <what is wrong>"``) for invalid request bodies. No traceback or internal path is ever sent.
"""

from __future__ import annotations

from collections.abc import Mapping


class ApiError(Exception):
    """An error with an HTTP status, a short kind (``"invalid request"``) and a reason for the client."""

    status: int = 400
    kind: str = "bad request"

    def __init__(self, detail: str, problems: list[str] | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(detail)
        self.detail = " ".join(detail.split())
        self.problems = problems
        self.headers = dict(headers or {})

    def body(self) -> dict[str, object]:
        body: dict[str, object] = {"error": self.kind, "detail": self.detail}
        if self.problems:
            body["problems"] = self.problems
        return body


class BadRequest(ApiError):
    status, kind = 400, "bad request"


class Unauthorized(ApiError):
    status, kind = 401, "unauthorized"


class Forbidden(ApiError):
    status, kind = 403, "forbidden"


class NotFound(ApiError):
    status, kind = 404, "not found"


class Conflict(ApiError):
    status, kind = 409, "conflict"


class PayloadTooLarge(ApiError):
    status, kind = 413, "payload too large"


class UnsupportedMediaType(ApiError):
    status, kind = 415, "unsupported media type"


class InvalidRequest(ApiError):
    status, kind = 422, "invalid request"


class InternalError(ApiError):
    status, kind = 500, "internal error"


class ServiceUnavailable(ApiError):
    status, kind = 503, "unavailable"

    def __init__(self, detail: str, retry_after_s: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)})


class GpuOutOfMemory(ServiceUnavailable):
    kind = "out of memory"


class ServerBusy(ServiceUnavailable):
    kind = "busy"
