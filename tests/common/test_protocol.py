from __future__ import annotations

import msgspec
import pytest

from common.protocol import (
    SCHEMA_VERSION,
    Accepted,
    Cancel,
    Error,
    EventBatch,
    Finish,
    GenerateRequest,
    ProtocolError,
    Token,
    TopToken,
    WorkerInfo,
    decode_control,
    decode_events,
    decode_request,
    decode_worker_info,
    encode,
)
from common.sampling_params import SamplingParams


def _request() -> GenerateRequest:
    params = SamplingParams(max_new_tokens=7, do_sample=True, temperature=0.7, seed=42, stop=("\n",))
    return GenerateRequest("r1", 2, "g1", "m", [1, 2, 3], params, generated_ids=[9], deadline=1.5)


def test_request_round_trip() -> None:
    assert decode_request(encode(_request())) == _request()


def test_event_batch_round_trip_keeps_every_kind_in_order() -> None:
    batch = EventBatch(
        "w1",
        17,
        [
            Accepted("r1", 0, "w1"),
            Token("r1", 0, 0, 5, "Hi", -0.25, False, [TopToken(5, "Hi", -0.25, False)]),
            Finish("r1", 0, 1, "eos_token", 3, seed=None, queue_time=0.01),
            Error("r2", 1, "generation", "boom"),
        ],
    )
    decoded = decode_events(encode(batch))
    assert decoded == batch
    assert [type(e) for e in decoded.events] == [Accepted, Token, Finish, Error]


def test_control_and_heartbeat_round_trip() -> None:
    assert decode_control(encode(Cancel("r", -1))) == Cancel("r", -1)
    info = WorkerInfo("w", "m", 1, 2, 300, 400, 512, 8, 1.0, 2.0)
    assert decode_worker_info(encode(info)) == info
    quantized = WorkerInfo("w", "m", 1, 2, 300, 400, 512, 8, 1.0, 2.0, device="cuda", quantize="awq")
    assert decode_worker_info(encode(quantized)).quantize == "awq"


def test_other_schema_version_is_refused() -> None:
    body = msgspec.msgpack.encode(_request())
    foreign = msgspec.msgpack.encode([SCHEMA_VERSION + 1, msgspec.Raw(body)])
    with pytest.raises(ProtocolError, match="schema version"):
        decode_request(foreign)


def test_garbage_and_wrong_message_kind_are_refused() -> None:
    with pytest.raises(ProtocolError):
        decode_request(b"\x00\x01garbage")
    with pytest.raises(ProtocolError):
        decode_request(encode(Cancel("r", 0)))
