"""The gateway's tokenizer gives transformers' ids and offsets, and a running gateway maps no libtorch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from transformers import AutoTokenizer

from common.errors import ValidationError
from common.model_source import ModelNotFound, resolve_model
from gateway.tokenizer import Tokenizer, TokenizerFilesMissing
from load.gateway_start import measure

TEXTS = ["Hello world", " What is the capital of France?", "<|im_start|>user\nhi<|im_end|>\n", "  two  spaces\t",
         "émoji 🤖 日本語", "", "a" * 300, "def f(x):\n    return x**2  # squared"]


def _compare(model_dir: Path) -> None:
    ours, theirs = Tokenizer(model_dir), AutoTokenizer.from_pretrained(str(model_dir))
    for text in TEXTS:
        for special in (True, False):
            enc = theirs(text, add_special_tokens=special, return_offsets_mapping=True)
            assert ours.encode(text, add_special_tokens=special) == enc.input_ids, (text, special)
            assert [(a, b) for _, _, a, b in ours.offsets(text, add_special_tokens=special)] == list(enc.offset_mapping)
            for skip in (True, False):
                assert ours.decode(enc.input_ids, skip) == theirs.decode(enc.input_ids, skip_special_tokens=skip)


def test_the_default_model_tokenizes_as_transformers_does(default_model_dir: Path) -> None:
    _compare(default_model_dir)


@pytest.mark.parametrize("flags", [{"add_bos_token": True}, {"add_bos_token": True, "add_eos_token": True},
                                   {"clean_up_tokenization_spaces": True}])
def test_tokenizer_config_flags_as_transformers_reads_them(tmp_path: Path, default_model_dir: Path,
                                                         flags: dict[str, bool]) -> None:
    shutil.copy(default_model_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    config = json.loads((default_model_dir / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, **flags}))
    _compare(tmp_path)


def test_text_the_tokenizer_cannot_take_is_a_validation_error(default_model_dir: Path) -> None:
    with pytest.raises(ValidationError, match="not valid text"):
        Tokenizer(default_model_dir).encode("lone \ud800 surrogate")


def test_a_directory_without_tokenizer_json_says_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(TokenizerFilesMissing, match="tokenizer.json"):
        Tokenizer(tmp_path)


def test_the_gateway_never_converts_the_bundled_model(tmp_path: Path) -> None:
    # Conversion loads torch: it belongs to the worker (or serve / compose's model-init), not the gateway.
    from common.config import DEFAULT_MODEL_ID

    with pytest.raises(ModelNotFound, match="not converted yet"):
        resolve_model(DEFAULT_MODEL_ID, model_cache=str(tmp_path), weights=False)
    assert not any(tmp_path.rglob("*.safetensors"))


def test_a_running_gateway_maps_no_libtorch(redis_url: str, key_prefix: str, default_model_dir: Path) -> None:
    pytest.importorskip("torch")  # the point: torch is installed, and the gateway still never loads it

    def tokenize(base_url: str) -> None:  # a request served, so nothing is imported lazily either
        r = httpx.post(f"{base_url}/tokenize", json={"inputs": "Hello world"}, timeout=5)
        assert [t["id"] for t in r.json()] == Tokenizer(default_model_dir).encode("Hello world")

    _, _, libtorch_mapped = measure(str(default_model_dir), redis_url, 60, key_prefix=key_prefix, then=tokenize)
    assert not libtorch_mapped
