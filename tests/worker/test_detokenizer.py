from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from worker.detokenizer import IncrementalDetokenizer

TEXTS = [
    "Hello, world! The capital of France is Paris.",
    "Unicode: café, naïve, 東京, emoji 🚀🎉 and more.",
    "  leading spaces\n\nnew lines\tand tabs",
    "def f(x):\n    return x ** 2  # square",
]


@pytest.fixture(scope="module")
def tokenizer(default_model_dir: Path):  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.mark.parametrize("text", TEXTS)
def test_pieces_join_to_the_full_decode(tokenizer, text: str) -> None:  # type: ignore[no-untyped-def]
    prompt = tokenizer("Prompt:").input_ids
    ids = tokenizer(text, add_special_tokens=False).input_ids
    detok = IncrementalDetokenizer(tokenizer, prompt)
    pieces = [detok.add(i) for i in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)
    assert all("\ufffd" not in p for p in pieces)


def test_continuation_context_keeps_spacing(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer("one two three four five six", add_special_tokens=False).input_ids
    split = 3
    detok = IncrementalDetokenizer(tokenizer, ids[:split])
    rest = "".join(detok.add(i) for i in ids[split:])
    assert tokenizer.decode(ids[:split]) + rest == tokenizer.decode(ids)


@pytest.mark.parametrize("skip_special", [True, False])
def test_a_byte_level_tokens_own_decode_gives_the_windows_pieces(tokenizer, skip_special: bool) -> None:  # type: ignore[no-untyped-def]
    import random

    from worker.detokenizer import Decoder

    assert Decoder(tokenizer).concatenative  # SmolLM2's decoder is byte-level
    window_only = Decoder(tokenizer, skip_special)
    window_only.concatenative = False
    rng = random.Random(0)
    prompt = tokenizer("Prompt:").input_ids
    runs = [tokenizer(text, add_special_tokens=False).input_ids for text in TEXTS]
    # Any ids at all: byte tokens that split a character, special tokens, odd neighbours.
    runs += [[rng.randrange(len(tokenizer)) for _ in range(200)] for _ in range(5)]
    runs += [[rng.randrange(300) if rng.random() < 0.3 else rng.randrange(len(tokenizer)) for _ in range(200)]
             for _ in range(5)]  # the byte alphabet's ids come first
    for ids in runs:
        fast = IncrementalDetokenizer(tokenizer, prompt, skip_special)
        slow = IncrementalDetokenizer(tokenizer, prompt, skip_special, window_only)
        assert [fast.add(i) for i in ids] + [fast.flush()] == [slow.add(i) for i in ids] + [slow.flush()]
