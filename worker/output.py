"""The worker's output side: engine outputs -> detokenized events -> one PUBLISH per gateway per step.

Runs on its own thread so the engine loop never waits on detokenization or Redis. It also applies
the stop-sequence rule of worker/finish.py to the decoded text (the only place text exists) and
reports each match through `on_stop`, so the worker loop aborts the request in the engine.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import redis

from common.errors import FinishReason
from common.gc_settings import settle_gc
from common.log import bind_request_id
from common.protocol import (
    Accepted,
    Error,
    Event,
    EventBatch,
    Finish,
    GenerateRequest,
    Token,
    TopToken,
    encode,
)
from common.redis_clients import is_cluster, publish
from common.streams import CONSUMER_GROUP, Keys
from worker.checkpoint import Checkpointer
from worker.detokenizer import Decoder, IncrementalDetokenizer
from worker.finish import stop_sequence_hit
from worker.request import RequestKey

if TYPE_CHECKING:
    from worker.batch import RequestOutput

__all__ = ["OutputProcessor"]

log = logging.getLogger("genfleet.worker.output")


@dataclass(slots=True)
class _Live:
    request: GenerateRequest
    detokenizer: IncrementalDetokenizer
    seed: int | None
    next_seq: int  # seq of the next token; continuations start after the relayed tokens
    accepted_at: float
    first_scheduled_at: float = 0.0


# Items on the queue: ("accept", key, request, seed, entry_id) | ("step", step, outputs)
#                   | ("error", key, error_type, message) | ("adopt", key, gateway_id) | ("forget", key)
_Item = tuple[Any, ...]


# Events a worker keeps for resending while Redis refuses its publishes (about a minute of a
# full batch's tokens); past it they are dropped and the gateways continue from the seq gap.
_MAX_UNSENT_EVENTS = 100_000


class OutputProcessor:
    def __init__(
        self,
        redis_client: redis.Redis,
        keys: Keys,
        worker_id: str,
        tokenizer: Any,
        on_stop: Callable[[RequestKey], None],
        checkpoint: Checkpointer | None = None,
    ) -> None:
        self._redis = redis_client
        self._sharded = is_cluster(redis_client)
        self._keys = keys
        self._worker_id = worker_id
        self._tokenizer = tokenizer
        self._special_ids = frozenset(getattr(tokenizer, "all_special_ids", ()))
        # Shared by every request's detokenizer (by skip_special_tokens): they cache per token id.
        self._decoders = {skip: Decoder(tokenizer, skip) for skip in (True, False)}
        self._token_texts: dict[int, str] = {}  # _decode_one's answers, bounded by the vocabulary
        self._on_stop = on_stop
        self._checkpoint = checkpoint  # None: --checkpoint-tokens false
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._live: dict[RequestKey, _Live] = {}
        self._acks: list[tuple[str, bytes]] = []  # (stream, entry id) acked in this round's pipeline
        self._unsent: dict[str, list[Event]] = {}  # by gateway: a failed round's events, sent next
        self._unsent_acks: list[tuple[str, bytes]] = []
        self._thread = threading.Thread(target=self._run, name="output", daemon=True)
        self.published_batches = 0

    # -- called from the engine thread -------------------------------------------------------
    def start(self) -> None:
        settle_gc()  # called once the model and tokenizer are loaded
        self._thread.start()

    def accepted(self, key: RequestKey, request: GenerateRequest, seed: int | None, entry_id: bytes | None) -> None:
        """`key` is the engine's id for this attempt; the entry is XACKed with the Accepted event."""
        self._queue.put(("accept", key, request, seed, entry_id))

    def step(self, step: int, outputs: list[RequestOutput]) -> None:
        if outputs:
            self._queue.put(("step", step, outputs))

    def error(self, key: RequestKey, error_type: str, message: str) -> None:
        self._queue.put(("error", key, error_type, message))

    def adopt(self, key: RequestKey, gateway_id: str) -> None:
        """Publish `key`'s events to `gateway_id` from now on, starting with an Accepted there."""
        self._queue.put(("adopt", key, gateway_id))

    def forget(self, key: RequestKey) -> None:
        """The request was cancelled: drop its state (no event; the canceller knows)."""
        self._queue.put(("forget", key))

    def close(self, timeout: float = 5.0) -> None:
        """Publish everything queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout)

    # -- the output thread ---------------------------------------------------------------------
    def _run(self) -> None:
        held: _Item | None = None
        while True:
            item = held if held is not None else self._queue.get()
            held = None
            items = [item]
            # Coalesce whatever else is already queued into the same publish round, up to the next
            # adopt: a round then holds each request's events for one gateway at most, so that
            # its journal (worker/checkpoint.py, which groups a round by gateway) keeps their order.
            while item is not None:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None and item[0] == "adopt":
                    held = item
                    break
                items.append(item)
            done = items[-1] is None
            if done and self._checkpoint is not None:
                self._checkpoint.urge()  # stopping: every journal written with this last round
            per_gateway: dict[str, list[Event]] = defaultdict(list)
            self._acks.clear()
            step_no = 0
            for it in items:
                if it is None:
                    continue
                try:
                    step_no = max(step_no, self._handle(it, per_gateway))
                except Exception:  # never let one bad request stop every stream
                    log.exception("output processing failed for %s", it[:2])
            self._publish(step_no, per_gateway)
            if done:
                return

    def _handle(self, item: _Item, out: dict[str, list[Event]]) -> int:
        kind = item[0]
        if kind == "accept":
            _, key, request, seed, entry_id = item
            if entry_id is not None:
                self._acks.append((self._keys.stream_of(request.model, request.req_id, request.priority), entry_id))
            context = list(request.input_ids) + list(request.generated_ids)
            self._live[key] = _Live(
                request=request,
                detokenizer=IncrementalDetokenizer(
                    self._tokenizer, context, request.params.skip_special_tokens,
                    self._decoders[request.params.skip_special_tokens],
                ),
                seed=seed,
                next_seq=len(request.generated_ids),
                accepted_at=time.time(),
            )
            out[request.gateway_id].append(Accepted(request.req_id, request.attempt, self._worker_id,
                                                    request.gateway_id))
            if self._checkpoint is not None:
                # Journaled at once: a gateway resuming it must know its owner, or it would take
                # it for queued when this worker dies before the next flush.
                self._checkpoint.urge(request.req_id)
            return 0
        if kind == "forget":
            self._live.pop(item[1], None)
            if self._checkpoint is not None:
                self._checkpoint.urge(item[1].req_id)  # what it generated goes to its journal now
            return 0
        if kind == "adopt":
            _, key, gateway_id = item
            live = self._live.get(key)
            if live is not None:  # else it has ended: the adopter finds the end in the journal
                before, live.request = live.request.gateway_id, msgspec.structs.replace(live.request, gateway_id=gateway_id)
                moved = Accepted(live.request.req_id, live.request.attempt, self._worker_id, gateway_id)
                out[gateway_id].append(moved)
                if before != gateway_id:  # gone, or another adopter that lost the race: it follows the journal
                    out[before].append(moved)
                if self._checkpoint is not None:
                    # The adopter reads the journal once it has this Accepted: whole by then.
                    self._checkpoint.urge(key.req_id)
            return 0
        if kind == "error":
            _, key, error_type, message = item
            live = self._live.pop(key, None)
            if live is not None:
                req = live.request
                out[req.gateway_id].append(Error(req.req_id, req.attempt, error_type, message))
            return 0
        _, step, outputs = item
        for output in outputs:
            self._handle_output(output, out)
        return int(step)

    def _handle_output(self, output: RequestOutput, out: dict[str, list[Event]]) -> None:
        live = self._live.get(output.key)
        if live is None:  # finished on a stop sequence or cancelled; the engine lags a step
            return
        req = live.request
        events = out[req.gateway_id]
        if output.first_scheduled_at and not live.first_scheduled_at:
            live.first_scheduled_at = output.first_scheduled_at
        # Runs once per token: everything the loop reads is looked up once per output.
        params = req.params
        stops, skip_special = params.stop, params.skip_special_tokens
        special_ids = self._special_ids
        add = live.detokenizer.add
        logprobs, tops = output.logprobs, output.top_tokens
        stop_hit = False
        for i, token_id in enumerate(output.new_token_ids):
            special = token_id in special_ids
            piece = add(token_id)
            text = piece
            if special and skip_special:
                # TGI shows a special token's own text in the stream, flagged special; the
                # generated_text leaves it out (the gateway skips special tokens' text).
                text = str(self._tokenizer.convert_ids_to_tokens(token_id))
            top = []
            if tops and i < len(tops):
                top = [TopToken(tid, self._decode_one(tid), lp, tid in special_ids) for tid, lp in tops[i]]
            logprob = logprobs[i] if i < len(logprobs) else 0.0
            events.append(Token(req.req_id, req.attempt, live.next_seq, token_id, text, logprob, special, top))
            live.next_seq += 1
            if stops and not special and stop_sequence_hit(live.detokenizer.text, piece, stops):
                stop_hit = True
                break
        reason: FinishReason | None = "stop_sequence" if stop_hit else output.finish_reason
        if reason is None and not output.expired and output.error is None:
            return
        self._live.pop(output.key, None)
        with bind_request_id(req.req_id):
            log.info("finished attempt %d: %s after %d tokens (prompt %d, %d cached)", req.attempt,
                     reason or ("error" if output.error else "timeout"), live.next_seq, output.num_prompt_tokens, output.num_cached_tokens)
        if stop_hit:
            self._on_stop(output.key)
        if output.error is not None:
            events.append(Error(req.req_id, req.attempt, "validation", output.error))
            return
        if reason is None:  # expired
            events.append(Error(req.req_id, req.attempt, "timeout", "Request deadline exceeded"))
            return
        events.append(self._finish(live, output, reason))

    def _finish(self, live: _Live, output: RequestOutput, reason: FinishReason) -> Finish:
        req = live.request
        now = time.time()
        first = live.first_scheduled_at or live.accepted_at
        prefill = []
        if output.prefill_logprobs is not None:
            prompt = list(req.input_ids) + list(req.generated_ids)
            prefill = [
                TopToken(tid, self._decode_one(tid), lp, tid in self._special_ids)
                for tid, lp in zip(prompt, [float("nan"), *output.prefill_logprobs])
            ]
        return Finish(
            req.req_id,
            req.attempt,
            live.next_seq,
            reason,
            output.num_prompt_tokens,
            live.seed,
            queue_time=max(0.0, first - (req.enqueued_at or live.accepted_at)),
            inference_time=max(0.0, now - first),
            prefill=prefill,
        )

    def _decode_one(self, token_id: int) -> str:
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = str(self._tokenizer.decode([token_id], skip_special_tokens=False))
        return text

    def _publish(self, step: int, per_gateway: dict[str, list[Event]]) -> None:
        checkpoint = self._checkpoint
        if checkpoint is not None:
            checkpoint.add(step, per_gateway)  # this round's events only: a failed round's are kept there
        if self._unsent:  # what the last round could not send goes first, in order
            for gateway_id, events in per_gateway.items():
                self._unsent.setdefault(gateway_id, []).extend(events)
            per_gateway, self._unsent = self._unsent, {}
        acks, self._unsent_acks = self._unsent_acks + self._acks, []
        if not per_gateway and not acks and not (checkpoint is not None and checkpoint.urgent):
            return
        pipe = self._redis.pipeline(transaction=False)
        if checkpoint is not None:
            checkpoint.write(pipe)
        for stream, entry_id in acks:
            # Deleted once accepted, so the stream's length is the backlog the gateways bound.
            pipe.xack(stream, CONSUMER_GROUP, entry_id)
            pipe.xdel(stream, entry_id)
        for gateway_id, events in per_gateway.items():
            batch = EventBatch(self._worker_id, step, events)
            publish(pipe, self._keys.gateway_channel(gateway_id), encode(batch), self._sharded)
        try:
            pipe.execute()
            self.published_batches += 1
            if checkpoint is not None:
                checkpoint.written(True)
        except redis.RedisError:
            if checkpoint is not None:
                checkpoint.written(False)
            # Sent again with the next round (gateways drop by seq what they already have), so a
            # lost Finish never leaves a stream waiting on a live owner. Past the cap it is dropped
            # and pub/sub's at-most-once shows: the gateway sees the seq gap and continues.
            log.warning("publish failed for %d gateways at step %d", len(per_gateway), step, exc_info=True)
            if sum(len(events) for events in per_gateway.values()) <= _MAX_UNSENT_EVENTS:
                self._unsent, self._unsent_acks = dict(per_gateway), acks
