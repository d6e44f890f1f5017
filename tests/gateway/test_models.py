"""gateway/models.py: which served model a request's name means, and when a name is refused."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from common.errors import GenfleetError
from gateway.fleet import FleetState
from gateway.models import ModelRegistry, ServedModel
from gateway.validation import Limits


class _View:
    """A fleet view's contract as the registry uses it: a state, and start/stop."""

    def __init__(self, state: FleetState) -> None:
        self.state = state
        self.started = 0

    async def start(self) -> None:
        self.started += 1

    async def stop(self) -> None:
        pass


def _served(name: str, state: FleetState) -> ServedModel:
    return ServedModel(name, SimpleNamespace(name=name), Limits(100, 200), _View(state), SimpleNamespace())  # type: ignore[arg-type]


def _state(*models: str, serving: bool = True) -> FleetState:
    worker = SimpleNamespace(draining=False, max_total_tokens=200, capacity_tokens=1000)
    return FleetState(True, (worker,) if serving else (), fleet_models=frozenset(models))  # type: ignore[arg-type]


def _registry(*models: str) -> tuple[ModelRegistry, list[str]]:
    opened: list[str] = []

    def open_model(name: str) -> ServedModel:
        opened.append(name)
        return _served(name, _state(*models))

    return ModelRegistry(_served("default", _state(*models)), open_model), opened


async def test_no_name_and_the_aliases_mean_the_default_model() -> None:
    registry, _ = _registry("default", "other")
    for name in (None, "", "tgi", "dummy", "default"):
        assert (await registry.get(name)).model_id == "default"


async def test_any_name_means_the_default_while_it_is_the_only_model() -> None:
    registry, opened = _registry("default")
    assert (await registry.get("gpt-4o")).model_id == "default"
    assert opened == []


async def test_a_model_of_a_live_worker_is_opened_once_even_by_concurrent_first_requests() -> None:
    registry, opened = _registry("default", "other")
    models = await asyncio.gather(*(registry.get("other") for _ in range(5)))
    assert {m.model_id for m in models} == {"other"} and opened == ["other"]
    assert models[0].fleet.started == 1  # type: ignore[attr-defined]
    assert registry.live_names() == ["default", "other"]
    assert [m.model_id for m in registry.opened()] == ["default", "other"]


async def test_a_name_nobody_serves_is_refused_with_the_served_names() -> None:
    registry, opened = _registry("default", "other")
    with pytest.raises(GenfleetError) as err:
        await registry.get("missing")
    assert err.value.status_code == 404 and "`missing`" in err.value.message and "`other`" in err.value.message
    assert opened == []


async def test_an_opened_model_whose_workers_are_gone_is_unavailable() -> None:
    registry, _ = _registry("default", "other")
    other = await registry.get("other")
    registry.default.fleet.state = _state("default")  # type: ignore[misc]
    other.fleet.state = _state(serving=False)  # type: ignore[misc]
    with pytest.raises(GenfleetError) as err:
        await registry.get("other")
    assert err.value.status_code == 503


async def test_a_model_whose_files_cannot_be_read_is_a_503_and_is_tried_again() -> None:
    calls = 0
    lock = threading.Lock()

    def open_model(name: str) -> Any:
        nonlocal calls
        with lock:
            calls += 1
        raise FileNotFoundError(f"{name} has no tokenizer.json")

    registry = ModelRegistry(_served("default", _state("default", "other")), open_model)
    for _ in range(2):
        with pytest.raises(GenfleetError) as err:
            await registry.get("other")
        assert err.value.status_code == 503 and "tokenizer.json" in err.value.message
    assert calls == 2
