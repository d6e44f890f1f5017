"""Pure-ASGI middleware: the request id of every response, and --api-key on the generation routes."""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from common.errors import GenfleetError
from common.log import bind_request_id
from gateway.errors import error_response

__all__ = ["ApiKeyMiddleware", "RequestIdMiddleware", "GENERATION_PATHS", "ADMIN_PATHS", "api_key_scope",
           "check_request_id"]

# Routes behind --api-key (TGI protects the generation routes only).
GENERATION_PATHS = frozenset({"/", "/generate", "/generate_stream", "/v1/chat/completions", "/v1/completions",
                              "/tokenize", "/chat_tokenize", "/invocations", "/watermark/detect"})


# Routes that change what the fleet serves (gateway/routes_lora.py): behind --api-key too.
ADMIN_PATHS = frozenset({"/v1/load_lora_adapter", "/v1/unload_lora_adapter"})


def _needs_key(method: str, path: str) -> bool:
    if method == "GET":
        return path.startswith("/generate_stream/")  # a request's stream by id (GET / is /health)
    return method == "POST" and (path in GENERATION_PATHS or path in ADMIN_PATHS or path.startswith("/cancel/"))


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_REQUEST_ID_RULE = "`{}` must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"


def check_request_id(value: str, name: str) -> None:
    """A request id from a client names the request on the wire and in every log line: refuse
    what cannot (400)."""
    if not _REQUEST_ID.fullmatch(value):
        raise GenfleetError("bad_request", _REQUEST_ID_RULE.format(name))


def api_key_scope(api_key: str | None) -> str:
    """What a request carries to say which key submitted it: a digest, never the key ("" = none).
    Bearer tokens compare case-insensitively (as TGI), so the digest is of the lowered key."""
    return hashlib.sha256(api_key.lower().encode()).hexdigest()[:32] if api_key else ""


class ApiKeyMiddleware:
    """Bearer auth, compared in constant time; a bare 401 without a body, as TGI answers."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"bearer {api_key}".lower().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _needs_key(scope["method"], scope["path"]):
            given = dict(scope["headers"]).get(b"authorization", b"").lower()
            if not hmac.compare_digest(given, self.expected):
                await send({"type": "http.response.start", "status": 401, "headers": [(b"content-length", b"0")]})
                await send({"type": "http.response.body", "body": b""})
                return
        await self.app(scope, receive, send)


class RequestIdMiddleware:
    """Names every response's request id (x-request-id), echoing the client's when it sent a valid
    one. An `Idempotency-Key` names it when given: a retry with the same key (or x-request-id)
    is answered by the same generation (gateway/resume.py)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        for name, shown in ((b"idempotency-key", "Idempotency-Key"), (b"x-request-id", "x-request-id")):
            given = headers.get(name)
            try:
                if given is not None:
                    check_request_id(given.decode("latin-1"), shown)
            except GenfleetError as exc:
                await error_response(exc)(scope, receive, send)
                return
        rid = headers.get(b"idempotency-key") or headers.get(b"x-request-id") or uuid.uuid4().hex.encode()
        request_id = rid.decode()
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid)]
            await send(message)

        # Log lines of this request carry its id; the id also names the request on the wire,
        # so the worker's log lines about it match (gateway/queue_client.py).
        with bind_request_id(request_id):
            await self.app(scope, receive, send_with_id)
