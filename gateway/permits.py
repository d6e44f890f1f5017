"""What a gateway holds at once, each with its bound: admitted requests and bodies still arriving."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.requests import Request

from common.errors import GenfleetError

__all__ = ["Permits", "Bodies"]


class Permits:
    """--max-concurrent-requests: taken without waiting (429 when none is left), held to the end."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def acquire(self) -> Callable[[], None]:
        """One permit, or GenfleetError("overloaded"); the returned release may be called twice."""
        if self.used >= self.limit:
            raise GenfleetError("overloaded", "Model is overloaded")
        self.used += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.used -= 1

        return release


class Bodies:
    """Request bodies still arriving: bounded in number, in time and in bytes."""

    def __init__(self, limit: int, timeout: float, payload_limit: int) -> None:
        self.limit = limit
        self.timeout = timeout
        self.payload_limit = payload_limit
        self.unfinished = 0

    async def read(self, request: Request) -> bytes:
        if self.unfinished >= self.limit:
            raise GenfleetError("overloaded", "Model is overloaded: too many request bodies are still arriving")
        too_large = GenfleetError("payload_too_large", f"Payload too large: the limit is {self.payload_limit} bytes")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.payload_limit:
            raise too_large
        self.unfinished += 1
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > self.payload_limit:
                        raise too_large
                    chunks.append(chunk)
        except TimeoutError:
            raise GenfleetError("request_timeout", f"Request body not received within {self.timeout:g} s") from None
        finally:
            self.unfinished -= 1
        return b"".join(chunks)
