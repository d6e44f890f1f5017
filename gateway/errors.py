"""Errors as HTTP answers in TGI's `{"error", "error_type"}` shape, decided in one place.

Every error raised before a response starts, on any route, reaches these exception handlers:
the counters of a generation request, the log line of every 5xx (with the request id and the
cause), and the body are written here. Errors inside a started stream are events in the
route's own shape (gateway/tgi_shapes.py, gateway/openai_shapes.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from common.errors import GenfleetError
from common.log import request_id_var

__all__ = ["error_response", "EXCEPTION_HANDLERS", "request_id_of", "mark_counted", "log_if_server_error"]

log = logging.getLogger("genfleet.gateway")

_HTTP_ERROR_TYPES = {404: "not_found", 405: "method_not_allowed"}


def error_response(exc: GenfleetError, headers: Mapping[str, str] | None = None) -> Response:
    extra = dict(headers or {})
    if exc.status_code in (429, 503):
        extra.setdefault("Retry-After", "1")
    if exc.status_code in (408, 413, 431):
        extra.setdefault("Connection", "close")  # the rest of what it sends is not read
    return JSONResponse({"error": exc.message, "error_type": exc.error_type}, status_code=exc.status_code,
                        headers=extra)


def request_id_of(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", "-"))


def log_if_server_error(exc: GenfleetError, where: str, request_id: str | None = None) -> None:
    """Every 5xx a client gets is logged with its cause and the request id (issue 13.6)."""
    if exc.status_code >= 500:
        log.warning("%s answered %d (%s) for request %s: %s", where, exc.status_code, exc.error_type,
                    request_id or request_id_var.get() or "-", exc.message)


def mark_counted(request: Request) -> None:
    """This request is in tgi_request_count: its failure goes into tgi_request_failure."""
    request.scope.setdefault("state", {})["counted"] = True


async def _genfleet_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GenfleetError)
    if request.scope.get("state", {}).get("counted"):
        request.app.state.ctx.metrics.record_failure(exc)
    log_if_server_error(exc, f"{request.method} {request.url.path}", request_id_of(request))
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error_type = _HTTP_ERROR_TYPES.get(exc.status_code, "bad_request")
    return JSONResponse({"error": exc.detail, "error_type": error_type}, status_code=exc.status_code,
                        headers=exc.headers)


async def _client_gone(request: Request, exc: Exception) -> Response:
    log.info("client left before sending its whole body (%s %s, request %s)", request.method, request.url.path,
             request_id_of(request))
    return Response(status_code=400)  # nobody reads it


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Starlette re-raises it afterwards, so its traceback is logged too.
    log.error("%s %s answered 500 for request %s: %r", request.method, request.url.path, request_id_of(request), exc)
    return JSONResponse({"error": "Internal server error", "error_type": "internal"}, status_code=500)


EXCEPTION_HANDLERS: dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]] = {
    GenfleetError: _genfleet_error,
    HTTPException: _http_error,
    ClientDisconnect: _client_gone,
    Exception: _unexpected,
}
