"""The models one gateway serves: its default (--model-id) and every model a live worker serves.

Workers started with different `--model-id`s on one Redis make one fleet; each model has its own
request stream (common/streams.py), so a gateway routes a request by picking the model's stream.
Here each model gets what a request of it needs: its tokenizer and chat template, its limits,
its fleet view (workers, backlog) and its lifecycle. They share the gateway's queue client (one
subscription: events are routed by request id), metrics and permits.

A model other than the default is opened on its first request, once a worker's heartbeat names
it: its tokenizer files are resolved and read on a thread (the model id means on the gateway what
it means on the worker: a local directory or a hub id in the shared cache).

Names: "tgi", "dummy" (what huggingface_hub's InferenceClient sends to a base URL) and an empty
name always mean the default model. While the fleet serves only the default model, any other
name means it too, as TGI's OpenAI routes accept any `model` for the one model they serve; once
it serves several, a name no live worker serves is refused (404) before anything is queued. TGI's routes (/generate,
/generate_stream, /, /tokenize, /info, /health) name a model with the `x-model-id` header.

LoRA adapters (the ids the model's workers announce, gateway/fleet.py): TGI's routes name one
with `parameters.adapter_id`, OpenAI's with `model`, as TGI takes it. An adapter the model's
workers do not all hold is refused before anything is queued (422 on TGI's routes; on OpenAI's,
once the fleet serves any adapter, a `model` that is neither a model nor an adapter is a 404,
where TGI would quietly answer from the base model).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from common.errors import GenfleetError, ValidationError
from gateway.fleet import FleetView
from gateway.lifecycle import Lifecycle
from gateway.tokenizer import Tokenizer
from gateway.validation import Limits

__all__ = ["ServedModel", "ModelRegistry", "DEFAULT_ALIASES", "MODEL_HEADER"]

log = logging.getLogger("genfleet.gateway.models")

# TGI's routes carry no model field: this header names the model (absent: the default).
MODEL_HEADER = "x-model-id"
# Names that mean the gateway's default model (TGI's examples send model="tgi").
DEFAULT_ALIASES = frozenset({"", "tgi", "dummy"})


@dataclass
class ServedModel:
    model_id: str
    tokenizer: Tokenizer
    model_limits: Limits  # from the settings and the model's files (common/context_length.py)
    fleet: FleetView
    lifecycle: Lifecycle

    @property
    def limits(self) -> Limits:
        """What a request is validated against: model_limits, lowered to what the live workers serve."""
        return self.fleet.state.limits(self.model_limits)

    def check_adapter(self, adapter_id: str) -> None:
        """ValidationError unless every serving worker of the model holds LoRA adapter `adapter_id`.
        With no serving worker at all it waits like any request (the worker that takes it checks)."""
        if not self.fleet.state.serving:
            return
        served = self.fleet.state.adapters
        if adapter_id not in served:
            listed = ", ".join(f"`{a}`" for a in sorted(served)) or "none"
            raise ValidationError(f"adapter `{adapter_id}` is not loaded for model `{self.model_id}` (loaded: {listed})")


class ModelRegistry:
    def __init__(self, default: ServedModel, open_model: Callable[[str], ServedModel]) -> None:
        self.default = default
        self._open_model = open_model  # builds a ServedModel (reads files: run it on a thread)
        self._models: dict[str, ServedModel] = {default.model_id: default}
        self._opening: dict[str, asyncio.Task[ServedModel]] = {}

    def live_names(self) -> list[str]:
        """The default model, then every other model some live worker serves, sorted."""
        others = sorted(self.default.fleet.state.fleet_models - {self.default.model_id})
        return [self.default.model_id, *others]

    def opened(self) -> list[ServedModel]:
        return list(self._models.values())

    async def get(self, name: str | None) -> ServedModel:
        """The model a request names (None: the default); GenfleetError not_found when nobody serves it."""
        if name is None or name in DEFAULT_ALIASES:
            return self.default
        fleet_models = self.default.fleet.state.fleet_models
        model = self._models.get(name)
        if model is not None:
            if name not in fleet_models or not model.fleet.state.serving:
                # Its workers are gone (the default model's requests wait for one instead: a
                # gateway's own model is expected back; another is known only from its workers).
                # Both views must see one alive, so a model absent from /v1/models is refused.
                raise GenfleetError("unavailable", f"No live worker serves model `{name}`")
            return model
        if name not in fleet_models:
            if not fleet_models - {self.default.model_id}:
                return self.default  # one model: the name is not checked, as TGI does not
            served = ", ".join(f"`{m}`" for m in self.live_names())
            raise GenfleetError("not_found", f"Model `{name}` is not served by this fleet (served: {served})")
        task = self._opening.get(name)
        if task is None:  # concurrent first requests of a model share one opening
            task = asyncio.ensure_future(self._open(name))
            self._opening[name] = task
        return await asyncio.shield(task)

    async def resolve(self, name: str | None) -> tuple[ServedModel, str]:
        """OpenAI's `model`: (the model, "") for a model's name, (its model, the id) for a LoRA adapter's."""
        state = self.default.fleet.state
        if name is None or name in DEFAULT_ALIASES or name in state.fleet_models or name in self._models:
            return await self.get(name), ""
        model_of = state.fleet_adapters
        if name in model_of:
            return await self.get(model_of[name]), name
        if model_of:  # adapters are served: a name that is neither is a mistake, not the base model
            adapters = ", ".join(f"`{a}`" for a in sorted(model_of))
            served = ", ".join(f"`{m}`" for m in self.live_names())
            raise GenfleetError("not_found", f"Model `{name}` is neither a model nor a LoRA adapter of this fleet "
                                f"(models: {served}; adapters: {adapters})")
        return await self.get(name), ""

    async def _open(self, name: str) -> ServedModel:
        try:
            model = await asyncio.to_thread(self._open_model, name)
            await model.fleet.start()
        except Exception as exc:
            log.warning("cannot serve model %s: %s", name, exc)
            raise GenfleetError("unavailable", f"Model `{name}` cannot be served by this gateway: {exc}") from exc
        finally:
            self._opening.pop(name, None)
        self._models[name] = model
        log.info("serving %s too (max input %d, max total %d)", name, model.model_limits.max_input_tokens,
                 model.model_limits.max_total_tokens)
        return model

    async def stop(self) -> None:
        for model in self._models.values():
            await model.fleet.stop()
