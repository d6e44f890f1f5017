"""POST /cancel/{request_id}: end a request from any gateway, by the id its client was given.

The request's claim (common/streams.py) names its model, its gateway and its API key's scope.
The cancel goes two ways at once: an Error event of type "cancelled" to the gateway that relays
it, which ends its client's stream as a normal finish with reason "cancelled" (the tokens so far
stand) and stops it wherever it runs; and a Cancel to its worker and journal, for a request
whose gateway is gone (a later resume is told it was cancelled). The worker frees its KV at its
next step either way.

Answers 200 `{"request_id", "cancelled": true}`, or `"cancelled": false` with the
`finish_reason` when it had already ended; 404 for an id no request has (or whose journal has
expired), 403 for another API key's request, in TGI's error shape.
"""

from __future__ import annotations

import logging

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from common.errors import CANCELLED, GenfleetError
from common.protocol import Cancel, Error
from gateway.context import ctx_of
from gateway.journal import Replay
from gateway.queue_client import QueueClient
from gateway.resume import check_scope

__all__ = ["cancel"]

log = logging.getLogger("genfleet.gateway.cancel")


async def cancel(request: Request) -> Response:
    ctx = ctx_of(request)
    req_id = request.path_params["request_id"]
    try:
        return await _cancel(ctx.queue_client, ctx.lifecycle.scope, req_id)
    except RedisError as exc:
        raise GenfleetError("unavailable", f"Request queue unavailable: {exc}") from exc


async def _cancel(qc: QueueClient, scope: str, req_id: str) -> Response:
    first = await qc.claimed(req_id)
    if first is None:
        raise GenfleetError("unknown_request", f"No request {req_id}: it is unknown, or it ended longer ago "
                            "than its journal is kept")
    check_scope(first, scope)
    replay = Replay(first)
    replay.fold(await qc.journal(req_id))
    if replay.ended:
        return JSONResponse({"request_id": req_id, "cancelled": False, "finish_reason": _ended_as(replay)})
    log.info("cancelling request %s (relayed by %s, on %s)", req_id, replay.reply_to, replay.owner or "no worker yet")
    message = f"Request {req_id} was cancelled"
    await qc.publish_to_gateway(replay.reply_to, [Error(req_id, replay.current.attempt, CANCELLED, message)])
    stop = Cancel(req_id, -1, CANCELLED)
    await qc.publish_cancel(first.model, replay.owner, stop)
    await qc.append_journal(req_id, stop)
    return JSONResponse({"request_id": req_id, "cancelled": True})


def _ended_as(replay: Replay) -> str:
    if replay.finish is not None:
        return replay.finish.reason
    if replay.error is not None:
        return replay.error.error_type
    return CANCELLED
