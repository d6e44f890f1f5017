"""Error types and finish reasons shared by the worker's output and the gateway's HTTP mapping."""

from __future__ import annotations

from typing import Literal

__all__ = ["FinishReason", "ErrorType", "HTTP_STATUS", "GenfleetError", "ValidationError", "GATEWAY_GONE",
           "CANCELLED"]

# TGI's finish reasons: what a Finish event carries and the API returns. worker/finish.py decides them.
# "cancelled" is the gateway's own: the request was ended by POST /cancel/{request_id}.
FinishReason = Literal["length", "eos_token", "stop_sequence", "cancelled"]

# TGI's error_type values, plus the fleet's own.
ErrorType = Literal[
    "validation",  # 422
    "overloaded",  # 429
    "generation",  # 424: the worker failed while generating
    "healthcheck",  # 503
    "unavailable",  # 503: Redis or every worker is gone
    "incomplete_generation",  # 500
    "incomplete_generation_stream",
    "timeout",  # 504-class: the request's deadline passed
    "dead_letter",  # 424: delivered too many times without being accepted
    "template_error",  # 422
    "tool_error",  # 422: tools or tool_choice the request cannot use
    "bad_request",  # 400: the body is not JSON
    "payload_too_large",  # 413
    "gateway_gone",  # never shown: a worker dropped the request of a gateway it took for dead
    "not_found",  # 404: no such route
    "unknown_request",  # 404: no request of that id to resume (never existed, or its journal expired)
    "request_gone",  # 410: the request to resume was cancelled (its client left, or nobody came back in time)
    "forbidden",  # 403: the request to resume belongs to another API key
    "method_not_allowed",  # 405
    "request_timeout",  # 408: the body did not arrive in time
    "header_too_large",  # 431: request headers over the bound
    "internal",  # 500: a bug
    "adapter",  # 400: the workers refused a LoRA adapter load or unload (its path, its format, its fit)
]

# The cancel reason of POST /cancel/{request_id}, and the error_type of the Error event that
# tells the request's own gateway to end its client's stream (with finish reason "cancelled").
CANCELLED = "cancelled"

# The cancel reason, and the Error a worker sends, when a gateway's heartbeat expired under its
# requests; a gateway that receives it is alive after all and continues the request elsewhere.
GATEWAY_GONE = "gateway_gone"

HTTP_STATUS: dict[str, int] = {
    "validation": 422,
    "template_error": 422,
    "tool_error": 422,
    "overloaded": 429,
    "generation": 424,
    "dead_letter": 424,
    "healthcheck": 503,
    "unavailable": 503,
    "incomplete_generation": 500,
    "incomplete_generation_stream": 500,
    "timeout": 504,
    "bad_request": 400,
    "payload_too_large": 413,
    "not_found": 404,
    "unknown_request": 404,
    "request_gone": 410,
    "forbidden": 403,
    "method_not_allowed": 405,
    "request_timeout": 408,
    "header_too_large": 431,
    "internal": 500,
    "adapter": 400,
}


class GenfleetError(Exception):
    """An error that maps to TGI's `{"error", "error_type"}` body."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message

    @property
    def status_code(self) -> int:
        return HTTP_STATUS.get(self.error_type, 500)


class ValidationError(GenfleetError):
    def __init__(self, message: str) -> None:
        super().__init__("validation", f"Input validation error: {message}")
