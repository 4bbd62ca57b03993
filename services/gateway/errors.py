"""ApiError: an OpenAI-style error answer, `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

from dataclasses import dataclass

# OpenAI's error `type` per HTTP status; a worker's ErrorInfo.type wins when it has one.
ERROR_TYPES = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}
DEFAULT_CODES = {
    404: "model_not_found",
    413: "request_too_large",
    429: "overloaded",
    500: "internal_error",
    503: "unavailable",
    504: "stall_timeout",
}


@dataclass
class ApiError(Exception):
    status: int
    type: str
    message: str
    param: str | None = None
    code: str | None = None
    retry_after_s: int | None = None
    """Sent as the Retry-After header (429 and 503)."""
    extra_headers: dict[str, str] | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.type}: {self.message}"

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        headers = dict(self.extra_headers or {})
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(self.retry_after_s)
        return headers


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, "invalid_request_error", message, param, code)


def api_error(status: int, message: str, param: str | None = None, code: str | None = None, **kw) -> ApiError:
    return ApiError(status, ERROR_TYPES.get(status, "server_error"), message, param, code or DEFAULT_CODES.get(status), **kw)
