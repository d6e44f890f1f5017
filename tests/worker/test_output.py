"""The worker's output side without Redis: what it publishes per step, and its fast decode paths.

The events are compared with a reference written the slow, obvious way (tokenizer.decode of
windows, as the output side did before its decoding was shared and cached).
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from redis import exceptions as redis_exceptions
from transformers import AutoTokenizer

from common.protocol import Event, Finish, GenerateRequest, Token, decode_events
from common.sampling_params import SamplingParams
from common.streams import Keys
from worker.detokenizer import Decoder
from worker.batch import RequestOutput
from worker.request import RequestKey
from worker.output import OutputProcessor


@pytest.fixture(scope="module")
def tokenizer(default_model_dir: Path):  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(default_model_dir)


class _Pipeline:
    def __init__(self, sink: list[bytes]) -> None:
        self.sink = sink

    def xack(self, *args: Any) -> None:
        pass

    def xdel(self, *args: Any) -> None:
        pass

    def publish(self, channel: str, data: bytes) -> None:
        self.sink.append(data)

    def execute(self) -> None:
        pass


class _Redis:
    def __init__(self) -> None:
        self.published: list[bytes] = []
        self.failures = 0  # rounds still to refuse, as a Redis restart would

    def pipeline(self, transaction: bool = False) -> _Pipeline:
        if self.failures:
            self.failures -= 1
            return _FailingPipeline([])
        return _Pipeline(self.published)


class _FailingPipeline(_Pipeline):
    def execute(self) -> None:
        raise redis_exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379")


def test_decoder_matches_tokenizer_decode(tokenizer) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(0)
    special = sorted(tokenizer.all_special_ids)
    for skip in (True, False):
        decode = Decoder(tokenizer, skip)
        for _ in range(3000):
            ids = [rng.choice(special) if rng.random() < 0.1 else rng.randrange(len(tokenizer))
                   for _ in range(rng.randint(1, 6))]
            want = tokenizer.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)
            assert decode(ids) == want, ids
            assert decode(ids) == want  # again, from the single-token cache where it applies


def test_decoder_falls_back_to_decode_for_other_tokenizers() -> None:
    class Plain:
        def decode(self, ids: list[int], skip_special_tokens: bool, clean_up_tokenization_spaces: bool) -> str:
            assert clean_up_tokenization_spaces is False
            return "|".join(map(str, ids)) + ("!" if skip_special_tokens else "?")

    decode = Decoder(Plain(), skip_special_tokens=False)
    assert decode([1, 2]) == "1|2?" and decode([3]) == "3?"


def _reference(tokenizer, context: list[int], ids: list[int]) -> list[str]:  # type: ignore[no-untyped-def]
    """The incremental pieces, decoding every window from scratch."""
    def dec(window: list[int]) -> str:
        return str(tokenizer.decode(window, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    all_ids, prefix, read, pieces = list(context[-5:]), 0, len(context[-5:]), []
    for token_id in ids:
        all_ids.append(token_id)
        before, full = dec(all_ids[prefix:read]), dec(all_ids[prefix:])
        if len(full) > len(before) and not full.endswith("\ufffd"):
            pieces.append(full[len(before):])
            prefix, read = read, len(all_ids)
        else:
            pieces.append("")
    return pieces


def test_steps_publish_the_same_events_as_decoding_each_window(tokenizer) -> None:  # type: ignore[no-untyped-def]
    redis = _Redis()
    out = OutputProcessor(redis, Keys("t"), "w0", tokenizer, on_stop=lambda key: None)  # type: ignore[arg-type]
    rng = random.Random(3)
    prompts = {f"r{i}": tokenizer(f"Prompt number {i}:").input_ids for i in range(8)}
    text = "Unicode: café, 東京, emoji 🚀🎉 and  spaces\n\tdone. " * 3
    streams = {key: tokenizer(text[i:], add_special_tokens=False).input_ids[:20] for i, key in enumerate(prompts)}
    for key, prompt in prompts.items():
        request = GenerateRequest(key, 0, "gw", "m", prompt, SamplingParams(max_new_tokens=20, top_n_tokens=2))
        out._handle(("accept", RequestKey(key, 0), request, None, None), defaultdict(list))
    for step in range(20):
        outputs = [RequestOutput(RequestKey(key, 0), [ids[step]], [-0.25], [[(ids[step], -0.25), (rng.randrange(500), -3.0)]],
                                 "length" if step == 19 else None, len(prompts[key]), 0)
                   for key, ids in streams.items()]
        events: dict[str, list[Event]] = defaultdict(list)
        out._handle(("step", step, outputs), events)
        out._publish(step, events)
    tokens: dict[str, list[Token]] = defaultdict(list)
    finishes = []
    for data in redis.published:
        for event in decode_events(data).events:
            if isinstance(event, Token):
                tokens[event.req_id].append(event)
            elif isinstance(event, Finish):
                finishes.append(event.req_id)
    assert sorted(finishes) == sorted(prompts)
    for key, ids in streams.items():
        got = tokens[key]
        assert [t.seq for t in got] == list(range(20)) and [t.id for t in got] == ids
        assert [t.text for t in got] == _reference(tokenizer, prompts[key], ids)
        for t in got:
            assert [x.text for x in t.top_tokens] == [tokenizer.decode([x.id], skip_special_tokens=False)
                                                      for x in t.top_tokens]
    assert not out._live


def test_a_round_redis_refused_is_sent_with_the_next(tokenizer) -> None:  # type: ignore[no-untyped-def]
    redis = _Redis()
    out = OutputProcessor(redis, Keys("t"), "w0", tokenizer, on_stop=lambda key: None)  # type: ignore[arg-type]
    prompt = tokenizer("Prompt:").input_ids
    out._handle(("accept", RequestKey("r", 0), GenerateRequest("r", 0, "gw", "m", prompt, SamplingParams(max_new_tokens=2)),
                 None, None), defaultdict(list))
    ids = tokenizer(" two words", add_special_tokens=False).input_ids[:2]
    redis.failures = 1
    for step, finish in ((0, None), (1, "length")):
        events: dict[str, list[Event]] = defaultdict(list)
        out._handle(("step", step, [RequestOutput(RequestKey("r", 0), [ids[step]], [-0.5], [], finish, len(prompt), 0)]), events)
        out._publish(step, events)
    got = [e for data in redis.published for e in decode_events(data).events]
    # The first round's token was not lost: it came first in the second round.
    assert [type(e).__name__ for e in got] == ["Token", "Token", "Finish"]
    assert [e.seq for e in got if isinstance(e, Token)] == [0, 1]
