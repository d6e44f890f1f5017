"""TGI's request schema and validation rules, with TGI's exact messages.

`parse_generate` turns a JSON body into a `GenerateInput` (or raises ValidationError, a 422);
tokenization and length checks happen after, in gateway/validation.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from common.errors import ValidationError
from common.streams import MAX_PRIORITY, MIN_PRIORITY
from gateway.grammar import GrammarSpec, parse_tgi_grammar

__all__ = ["GenerateParameters", "GenerateInput", "parse_generate", "parse_parameters", "check_ranges"]


@dataclass(frozen=True)
class GenerateParameters:
    best_of: int | None = None
    temperature: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None  # not in TGI's schema; set by the OpenAI routes
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    do_sample: bool = False
    max_new_tokens: int | None = None
    return_full_text: bool | None = None
    stop: tuple[str, ...] = ()
    truncate: int | None = None
    watermark: bool = False
    details: bool = False
    decoder_input_details: bool = False
    seed: int | None = None
    top_n_tokens: int | None = None
    grammar: GrammarSpec | None = None  # what the output must match (gateway/grammar.py)
    adapter_id: str | None = None
    ignore_eos: bool = False  # genfleet extension for benchmarks
    min_tokens: int = 0  # vLLM's extra on the OpenAI routes: EOS is not sampled before this many tokens
    priority: int = 0  # larger is more urgent, MIN_PRIORITY..MAX_PRIORITY (common/streams.py)

    @property
    def samples(self) -> bool:
        """TGI samples when asked to, or when any warper is set."""
        return (
            self.do_sample
            or (self.temperature is not None and self.temperature != 1.0)
            or (self.top_k is not None and self.top_k > 0)
            or (self.top_p is not None and self.top_p < 1.0)
            or (self.typical_p is not None and self.typical_p < 1.0)
        )


@dataclass(frozen=True)
class GenerateInput:
    inputs: str
    parameters: GenerateParameters = field(default_factory=GenerateParameters)
    stream: bool = False


_FLOATS = ("temperature", "repetition_penalty", "frequency_penalty", "presence_penalty", "top_p", "typical_p")
_INTS = ("best_of", "top_k", "max_new_tokens", "truncate", "seed", "top_n_tokens")
_BOOLS = ("do_sample", "return_full_text", "watermark", "details", "decoder_input_details", "ignore_eos")


def parse_generate(body: Any) -> GenerateInput:
    if not isinstance(body, dict):
        raise ValidationError("expected a JSON object with `inputs`")
    if "inputs" not in body:
        raise ValidationError("missing field `inputs`")
    inputs = body["inputs"]
    if not isinstance(inputs, str):
        raise ValidationError(f"`inputs` must be a string, got {type(inputs).__name__}")
    if inputs == "":
        raise ValidationError("`inputs` cannot be empty")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ValidationError("`stream` must be a boolean")
    raw = body.get("parameters")
    if raw is None:
        # TGI's default when `parameters` is absent altogether: sample.
        return GenerateInput(inputs, GenerateParameters(do_sample=True), stream)
    return GenerateInput(inputs, parse_parameters(raw), stream)


def parse_parameters(raw: Any) -> GenerateParameters:
    if not isinstance(raw, dict):
        raise ValidationError("`parameters` must be an object")
    values: dict[str, Any] = {}
    for name in _FLOATS:
        v = raw.get(name)
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValidationError(f"`{name}` must be a number")
            values[name] = float(v)
    for name in _INTS:
        v = raw.get(name)
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 64:
                raise ValidationError(f"`{name}` must be a non-negative integer")
            values[name] = v
    for name in _BOOLS:
        v = raw.get(name)
        if v is not None:
            if not isinstance(v, bool):
                raise ValidationError(f"`{name}` must be a boolean")
            values[name] = v
    stop = raw.get("stop")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise ValidationError("`stop` must be a list of strings")
        values["stop"] = tuple(stop)
    adapter = raw.get("adapter_id")
    if adapter is not None and not isinstance(adapter, str):
        raise ValidationError("`adapter_id` must be a string")
    values["adapter_id"] = adapter
    values["grammar"] = parse_tgi_grammar(raw.get("grammar"))
    priority = raw.get("priority")
    if priority is not None:
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValidationError("`priority` must be an integer")
        values["priority"] = priority
    params = GenerateParameters(**values)
    check_ranges(params)
    return params


def check_ranges(p: GenerateParameters) -> None:
    if not MIN_PRIORITY <= p.priority <= MAX_PRIORITY:
        raise ValidationError(f"`priority` must be >= {MIN_PRIORITY} and <= {MAX_PRIORITY}. Given: {p.priority}")
    if p.temperature is not None and p.temperature <= 0:
        raise ValidationError("`temperature` must be strictly positive")
    if p.repetition_penalty is not None and p.repetition_penalty <= 0:
        raise ValidationError("`repetition_penalty` must be strictly positive")
    if p.frequency_penalty is not None and not -2.0 <= p.frequency_penalty <= 2.0:
        raise ValidationError("`frequency_penalty` must be >= -2.0 and <= 2.0")
    if p.presence_penalty is not None and not -2.0 <= p.presence_penalty <= 2.0:
        raise ValidationError("`presence_penalty` must be >= -2.0 and <= 2.0")
    if p.top_p is not None and not 0.0 < p.top_p < 1.0:
        raise ValidationError("`top_p` must be > 0.0 and < 1.0")
    if p.typical_p is not None and not 0.0 < p.typical_p < 1.0:
        raise ValidationError("`typical_p` must be > 0.0 and < 1.0")
    if p.top_k is not None and p.top_k <= 0:
        raise ValidationError("`top_k` must be strictly positive")
    if p.max_new_tokens is not None and p.max_new_tokens == 0:
        raise ValidationError("`max_new_tokens` must be strictly positive")
