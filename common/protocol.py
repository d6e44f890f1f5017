"""Every message that crosses Redis, as a typed msgspec struct, with one encoder/decoder pair.

Messages and where they travel (key names in common/streams.py):

    gateway --XADD stream {p}:req:{model}--------------> worker   GenerateRequest
    worker  --PUBLISH {p}:gw:{gateway_id}--------------> gateway  EventBatch[Accepted|Token|Finish|Error]
    gateway --PUBLISH {p}:wk:{worker_id} / {p}:ctl:{m}-> worker   Cancel | Adopt | LoadAdapter | UnloadAdapter
    both    --RPUSH {p}:log:{req_id} EX ttl-----------> all     JournalEntry (the request's journal)
    worker  --SET {p}:worker:{id} EX ttl----------------> all     WorkerInfo (heartbeat)
    gateway --SET {p}:gateway:{id} EX ttl---------------> all     GatewayInfo (heartbeat)

Structs are encoded as msgpack arrays (field order is the wire format) inside an envelope
carrying SCHEMA_VERSION; a peer with another version is refused loudly, never misread.
Never pickle across processes.
"""

from __future__ import annotations

from typing import Union

import msgspec

from common.errors import FinishReason
from common.sampling_params import SamplingParams

__all__ = [
    "SCHEMA_VERSION",
    "ProtocolError",
    "GenerateRequest",
    "Accepted",
    "TopToken",
    "Token",
    "Finish",
    "Error",
    "Event",
    "EventBatch",
    "Cancel",
    "Adopt",
    "LoadAdapter",
    "UnloadAdapter",
    "Control",
    "JournalEntry",
    "WorkerInfo",
    "GatewayInfo",
    "encode",
    "decode_request",
    "decode_events",
    "decode_control",
    "decode_journal_entry",
    "decode_worker_info",
    "decode_gateway_info",
]

SCHEMA_VERSION = 8  # 2: SamplingParams.min_tokens; 3: SamplingParams.watermark; 4: Adopt, journal, scope;
# 5: SamplingParams.grammar; 6: WorkerInfo.speculate and .speculation; 7: GenerateRequest.adapter_id,
# LoadAdapter / UnloadAdapter, WorkerInfo.adapters; 8: Accepted.gateway_id


class ProtocolError(ValueError):
    """A message that is not ours, or from a peer speaking another schema version."""


class GenerateRequest(msgspec.Struct, array_like=True, frozen=True, tag="gen"):
    req_id: str  # gateway-assigned, unique across the fleet
    attempt: int  # 0 for the first try; +1 for each continuation after a lost owner
    gateway_id: str  # whose channel receives this request's events
    model: str  # the served model id (selects the stream)
    input_ids: list[int]  # the prompt after truncation and templating
    params: SamplingParams  # resolved sampling parameters; max_new_tokens is what remains
    generated_ids: list[int] = []  # tokens already relayed to the client by earlier attempts
    deadline: float = 0.0  # unix time after which no worker may serve it; 0 = none
    priority: int = 0  # higher is served first among waiting requests
    enqueued_at: float = 0.0  # unix time of the XADD (queue-time metrics)
    scope: str = ""  # digest of the API key that submitted it ("" = none): who may attach to it
    adapter_id: str = ""  # the LoRA adapter the tokens come from ("" = the base model)


class Accepted(msgspec.Struct, array_like=True, frozen=True, tag="acc"):
    req_id: str
    attempt: int
    worker_id: str  # owner from now on: Cancel goes to this worker's channel
    # The gateway the owner publishes the request's events to from now on. An Adopt moves them:
    # the adopter gets an Accepted naming itself, the gateway they went to before one naming the
    # adopter (so, of two gateways adopting one request at once, the loser knows it lost).
    gateway_id: str = ""


class TopToken(msgspec.Struct, array_like=True, frozen=True):
    id: int
    text: str
    logprob: float
    special: bool


class Token(msgspec.Struct, array_like=True, frozen=True, tag="tok"):
    req_id: str
    attempt: int
    seq: int  # index of this token in the request's whole output (continuations keep counting)
    id: int
    text: str  # the text this token adds to the output (may be "" while a UTF-8 char is split)
    logprob: float
    special: bool
    top_tokens: list[TopToken] = []


class Finish(msgspec.Struct, array_like=True, frozen=True, tag="fin"):
    req_id: str
    attempt: int
    seq: int  # number of tokens in the whole output; the gateway checks it saw them all
    reason: FinishReason
    prompt_tokens: int  # length of the prompt the worker prefilled for this attempt
    seed: int | None = None
    queue_time: float = 0.0  # seconds from XADD to first schedule on the worker
    inference_time: float = 0.0  # seconds from first schedule to finish
    prefill: list[TopToken] = []  # prompt logprobs when params.prefill_logprobs


class Error(msgspec.Struct, array_like=True, frozen=True, tag="err"):
    req_id: str
    attempt: int
    error_type: str  # TGI error_type ("generation", "validation", "dead_letter", ...)
    message: str


Event = Union[Accepted, Token, Finish, Error]


class EventBatch(msgspec.Struct, array_like=True, frozen=True, tag="batch"):
    worker_id: str
    step: int  # the worker's engine step counter (diagnostics)
    events: list[Event]  # in order; one PUBLISH carries every event of a step for one gateway


class Cancel(msgspec.Struct, array_like=True, frozen=True, tag="cancel"):
    req_id: str
    attempt: int  # -1 cancels every attempt
    reason: str = "client_disconnected"


class Adopt(msgspec.Struct, array_like=True, frozen=True, tag="adopt"):
    """From now on, publish every attempt of `req_id` to `gateway_id`'s channel (its old gateway
    is gone and a client reconnected through this one). The owner answers with an Accepted on the
    new channel: what it published before that is in the request's journal."""

    req_id: str
    gateway_id: str


class LoadAdapter(msgspec.Struct, array_like=True, frozen=True, tag="lora_load"):
    """Load the PEFT adapter at `path` (a directory on the worker's host) under `adapter_id`. Each
    worker answers on `gateway_id`'s channel with an EventBatch under `reply_id`: an Accepted once
    it holds the adapter, or an Error saying why it cannot."""

    adapter_id: str
    path: str
    gateway_id: str
    reply_id: str


class UnloadAdapter(msgspec.Struct, array_like=True, frozen=True, tag="lora_unload"):
    """Serve no new request of `adapter_id` (running ones finish first); answered as LoadAdapter."""

    adapter_id: str
    gateway_id: str
    reply_id: str


Control = Union[Cancel, Adopt, LoadAdapter, UnloadAdapter]

# What a request's journal ({p}:log:{req_id}, a list) holds, in order: the gateway's
# GenerateRequest of every attempt, the owner's EventBatch of every step that had events for it
# (written once per step with the publish), and the Cancel or Adopt of a gateway.
JournalEntry = Union[GenerateRequest, EventBatch, Cancel, Adopt]


class WorkerInfo(msgspec.Struct, array_like=True, frozen=True, tag="worker"):
    worker_id: str
    model: str
    running: int  # requests in the running batch
    waiting: int  # accepted but not yet scheduled
    free_kv_tokens: int  # KV capacity not in use
    capacity_tokens: int  # total KV capacity in tokens
    max_total_tokens: int  # longest sequence this worker can serve
    max_batch_size: int
    started_at: float
    updated_at: float
    draining: bool = False  # SIGTERM received: takes no new work
    metrics_port: int = 0  # its own Prometheus listener, 0 = none
    device: str = "cpu"
    quantize: str | None = None  # --quantize method serving the model (TGI's names), None = dense
    speculate: int = 0  # --speculate: most draft tokens verified per request and step, 0 = off
    speculation: str | None = None  # how drafts are made ("ngram"), None = off
    adapters: list[str] = []  # ids of the LoRA adapters it serves (GenerateRequest.adapter_id)


class GatewayInfo(msgspec.Struct, array_like=True, frozen=True, tag="gateway"):
    gateway_id: str
    in_flight: int
    started_at: float
    updated_at: float


class _Envelope(msgspec.Struct, array_like=True):
    version: int
    body: msgspec.Raw


_encoder = msgspec.msgpack.Encoder()
_envelope_decoder = msgspec.msgpack.Decoder(_Envelope)
_request_decoder = msgspec.msgpack.Decoder(GenerateRequest)
_events_decoder = msgspec.msgpack.Decoder(EventBatch)
_control_decoder = msgspec.msgpack.Decoder(Control)
_journal_decoder = msgspec.msgpack.Decoder(JournalEntry)
_worker_info_decoder = msgspec.msgpack.Decoder(WorkerInfo)
_gateway_info_decoder = msgspec.msgpack.Decoder(GatewayInfo)


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(_Envelope(SCHEMA_VERSION, msgspec.Raw(_encoder.encode(msg))))


def decode_request(data: bytes) -> GenerateRequest:
    return _decode(data, _request_decoder)


def decode_events(data: bytes) -> EventBatch:
    return _decode(data, _events_decoder)


def decode_control(data: bytes) -> Control:
    return _decode(data, _control_decoder)  # type: ignore[return-value]


def decode_journal_entry(data: bytes) -> JournalEntry:
    return _decode(data, _journal_decoder)  # type: ignore[return-value]


def decode_worker_info(data: bytes) -> WorkerInfo:
    return _decode(data, _worker_info_decoder)


def decode_gateway_info(data: bytes) -> GatewayInfo:
    return _decode(data, _gateway_info_decoder)


def _decode(data: bytes, decoder: msgspec.msgpack.Decoder) -> msgspec.Struct:  # type: ignore[type-arg]
    try:
        envelope = _envelope_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"not a genfleet message: {exc}") from exc
    if envelope.version != SCHEMA_VERSION:
        raise ProtocolError(
            f"schema version {envelope.version} is not supported (this build speaks {SCHEMA_VERSION})"
        )
    try:
        return decoder.decode(envelope.body)  # type: ignore[no-any-return]
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"malformed message: {exc}") from exc
