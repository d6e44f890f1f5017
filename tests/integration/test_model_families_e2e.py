"""New model families served end to end: a tiny random checkpoint of each (transformers' own classes,
the default model's tokenizer), one worker each behind one gateway on a real Redis, greedy tokens as
transformers' on the same weights."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
import transformers

from tests.integration.fleet import FleetProcesses, start_worker

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
_SHAPE = dict(vocab_size=49152, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False, bos_token_id=1,
              eos_token_id=2, pad_token_id=0)
# Sliding-window families (a window shorter than prompt + output; Mistral's on every layer, so its
# worker gives back the pages behind it as the request runs) and a mixture of experts.
# Class names, resolved when a checkpoint is made: a modeling module imported at collection
# imports triton before the kernel tests can choose its CPU interpreter.
FAMILIES = {
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               {"head_dim": 16, "sliding_window": 8, "attn_logit_softcapping": 2.0, "final_logit_softcapping": 5.0}),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 8}),
}
PROMPT = "The capital of France is"
MAX_NEW = 12


def _checkpoint(family: str, root: Path, default_model_dir: Path) -> tuple[Path, list[int]]:
    """The family's checkpoint directory and transformers' greedy tokens for PROMPT."""
    config_name, model_name, extra = FAMILIES[family]
    config_cls, model_cls = getattr(transformers, config_name), getattr(transformers, model_name)
    torch.manual_seed(0)
    model = model_cls(config_cls(**{**_SHAPE, **extra})).eval()
    with torch.no_grad():  # larger weights than the init, so that the tokens vary
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = root / family
    model.save_pretrained(path)
    for name in _TOKENIZER_FILES:
        shutil.copy(default_model_dir / name, path / name)
    ids = transformers.AutoTokenizer.from_pretrained(path)(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=MAX_NEW, do_sample=False, attention_mask=torch.ones_like(ids))
    return path, out[0, ids.shape[1]:].tolist()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path) -> dict[str, tuple[Path, list[int]]]:
    root = tmp_path_factory.mktemp("families")
    return {family: _checkpoint(family, root, default_model_dir) for family in sorted(FAMILIES)}


@pytest.fixture(scope="module")
def fleet(redis_server, checkpoints: dict[str, tuple[Path, list[int]]]) -> Iterator[FleetProcesses]:  # type: ignore[no-untyped-def]
    # One gateway, one worker per family (the first family is the gateway's default model).
    first, *others = sorted(checkpoints)
    # Pages of 4 tokens: the prompt and its output span several, so Mistral's first ones go back.
    worker = ("--max-batch-total-tokens", "2048", "--dtype", "float32", "--block-size", "4")
    processes = FleetProcesses(redis_server.url, "families").start(
        worker_args=("--model-id", str(checkpoints[first][0]), *worker),
        gateway_args=("--model-id", str(checkpoints[first][0])),
    )
    for family in others:
        processes.workers.append(start_worker(redis_server.url, "families", f"families-{family}",
                                              "--model-id", str(checkpoints[family][0]), *worker))
    try:
        _until_served(processes.base_url, len(checkpoints))
        yield processes
    finally:
        processes.stop()


def _until_served(base: str, count: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(httpx.get(f"{base}/v1/models", timeout=10).json()["data"]) == count:
            return
        time.sleep(0.3)
    raise AssertionError(f"not every family's worker came up in {timeout}s")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_served_greedy_tokens_match_transformers(
    fleet: FleetProcesses, checkpoints: dict[str, tuple[Path, list[int]]], family: str
) -> None:
    path, expected = checkpoints[family]
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": MAX_NEW, "details": True}}
    r = httpx.post(f"{fleet.base_url}/generate", json=body, headers={"x-model-id": str(path)}, timeout=120)
    assert r.status_code == 200, r.text
    tokens = [t["id"] for t in r.json()["details"]["tokens"]]
    # The reference stops at EOS too; a random model rarely picks it, but compare what both made.
    assert tokens == expected[: len(tokens)] and len(tokens) > 0
    if r.json()["details"]["finish_reason"] == "length":
        assert tokens == expected
