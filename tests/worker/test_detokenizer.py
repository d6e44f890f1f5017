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
