"""Folding a request's journal: the tokens a resumed client may be sent, across continuations."""

from __future__ import annotations

from common.errors import GATEWAY_GONE
from common.protocol import Accepted, Adopt, Cancel, Error, EventBatch, Finish, GenerateRequest, Token
from common.sampling_params import SamplingParams
from gateway.journal import Replay


def _req(attempt: int = 0, generated: tuple[int, ...] = (), gateway: str = "g1") -> GenerateRequest:
    return GenerateRequest("r", attempt, gateway, "m", [1, 2], SamplingParams(max_new_tokens=8),
                           generated_ids=list(generated))


def _tok(seq: int, attempt: int = 0, tid: int | None = None) -> Token:
    return Token("r", attempt, seq, 100 + seq if tid is None else tid, f" t{seq}", -0.1, False)


def _step(*events: object, worker: str = "w1") -> EventBatch:
    return EventBatch(worker, 0, list(events))  # type: ignore[arg-type]


def test_tokens_owner_and_finish_fold_in_order_and_incrementally() -> None:
    replay = Replay(_req())
    added = replay.fold([_step(Accepted("r", 0, "w1"), _tok(0)), _step(_tok(1), _tok(1))])
    assert [t.seq for t in added] == [0, 1] and replay.owner == "w1" and not replay.ended
    assert replay.read == 2
    added = replay.fold([_step(_tok(2), Finish("r", 0, 3, "length", 2))])
    assert [t.seq for t in added] == [2] and replay.finish is not None and replay.ended and not replay.gone


def test_a_continuation_drops_the_old_attempts_tokens_past_its_start() -> None:
    replay = Replay(_req())
    replay.fold([_step(_tok(0), _tok(1), _tok(2))])
    # The gateway relayed two tokens before it continued: attempt 1 starts at seq 2 and samples anew.
    added = replay.fold([_req(1, (100, 101)), _step(_tok(3), _tok(4)), _step(Accepted("r", 1, "w2"), worker="w2"),
                         _step(_tok(2, 1, tid=7), _tok(3, 1, tid=8), worker="w2")])
    assert [(t.seq, t.attempt, t.id) for t in replay.tokens] == [(0, 0, 100), (1, 0, 101), (2, 1, 7), (3, 1, 8)]
    assert [t.seq for t in added] == [2, 3] and replay.owner == "w2"
    replay.fold([_step(Finish("r", 0, 5, "length", 2)), _step(Finish("r", 1, 4, "length", 4), worker="w2")])
    assert replay.finish is not None and replay.finish.attempt == 1


def test_adopt_cancel_and_gateway_gone() -> None:
    replay = Replay(_req())
    replay.fold([_step(_tok(0)), Adopt("r", "g2"), Cancel("r", 0, "superseded")])
    assert replay.reply_to == "g2" and not replay.ended
    replay.fold([Cancel("r", 0)])
    assert replay.gone
    expired = Replay(_req())
    expired.fold([_step(_tok(0), Error("r", 0, GATEWAY_GONE, "Cancelled"))])
    assert expired.gone and expired.ended


def test_the_gateways_tokens_fill_what_a_dead_worker_never_journaled() -> None:
    # The worker journaled seq 0-1 and died; its gateway had relayed 0-3, and journals them ahead
    # of the continuation (gateway/queue_client.py enqueue). Without them seq 4 on is past a hole.
    relayed = [_tok(0), _tok(1), _tok(2), _tok(3)]
    holed = Replay(_req())
    holed.fold([_step(_tok(0), _tok(1)), _req(1, (100, 101, 102, 103)), _step(_tok(4, 1), worker="w2")])
    assert [t.seq for t in holed.tokens] == [0, 1]
    replay = Replay(_req())
    added = replay.fold([_step(_tok(0), _tok(1)), _step(*relayed, worker="gateway:g1"), _req(1, (100, 101, 102, 103)),
                         _step(_tok(4, 1), _tok(5, 1), Finish("r", 1, 6, "length", 2), worker="w2")])
    assert [(t.seq, t.attempt) for t in replay.tokens] == [(0, 0), (1, 0), (2, 0), (3, 0), (4, 1), (5, 1)]
    assert [t.seq for t in added] == list(range(6)) and replay.finish is not None


def test_the_owners_accepted_says_which_gateway_it_publishes_to() -> None:
    # Two gateways adopt at once; the owner takes g3's Adopt last: its Accepted events say so,
    # whatever order the Adopts reached the journal in.
    replay = Replay(_req())
    replay.fold([_step(Accepted("r", 0, "w1", "g1"), _tok(0)), Adopt("r", "g3"), Adopt("r", "g2"),
                 _step(Accepted("r", 0, "w1", "g2"), Accepted("r", 0, "w1", "g3"), _tok(1))])
    assert replay.reply_to == "g3" and replay.owner == "w1" and [t.seq for t in replay.tokens] == [0, 1]
