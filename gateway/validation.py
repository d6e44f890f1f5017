"""From a parsed request to what goes on the wire: TGI's checks, tokenization and length limits.

Order follows TGI: cheap parameter checks, then tokenization (with truncation), then the total
length check, then the input length check — all before anything is queued. The seed is resolved
here, once, for every fleet request the HTTP request fans out to (best_of, n); continuations
carry it on.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import msgspec

from common.config import GatewayConfig
from common.errors import ValidationError
from common.sampling_params import SamplingParams
from gateway.grammar import compile_grammar
from gateway.schemas import GenerateInput, GenerateParameters
from gateway.tokenizer import Tokenizer

__all__ = ["Limits", "Validated", "validate", "off_loop"]

T = TypeVar("T")

# Bodies up to this many bytes (a prompt of ~500 characters) are tokenized on the event loop (~0.2 ms
# at most): a hop to a thread costs more than that once the loop is busy, since each side then
# waits for the GIL.
_INLINE_BYTES = 600
_SEED_RANGE = 1 << 63


@dataclass(frozen=True)
class Limits:
    max_input_tokens: int
    max_total_tokens: int


@dataclass(frozen=True)
class Validated:
    input_ids: list[int]
    run_params: tuple[SamplingParams, ...]  # one per fleet request (best_of or n), seeds resolved
    return_full_text: bool
    details: bool
    decoder_input_details: bool
    input_text: str
    priority: int = 0

    @property
    def params(self) -> SamplingParams:
        return self.run_params[0]


async def off_loop(work: Callable[[], T], body_size: int) -> T:
    """Tokenizing and templating what a request of `body_size` bytes holds: inline when short, else
    on a thread (milliseconds of work), so that open streams keep flowing. The rule of every route."""
    if body_size <= _INLINE_BYTES:
        return work()
    return await asyncio.to_thread(work)


def validate(
    req: GenerateInput, config: GatewayConfig, limits: Limits, tokenizer: Tokenizer, *,
    stream: bool, capacity_tokens: int | None = None, add_special_tokens: bool = True, fan_out: int = 1,
) -> Validated:
    p = req.parameters
    best_of = p.best_of or 1
    _check_parameters(p, config, limits, stream=stream)
    grammar = compile_grammar(p.grammar) if p.grammar is not None else None
    input_ids = tokenizer.encode(req.inputs, add_special_tokens=add_special_tokens)
    if p.truncate is not None and len(input_ids) > p.truncate:
        input_ids = input_ids[-p.truncate :]
    input_len = len(input_ids)
    max_new = p.max_new_tokens if p.max_new_tokens is not None else max(1, limits.max_total_tokens - input_len)
    if input_len + max_new > limits.max_total_tokens:
        raise ValidationError(
            f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. "
            f"Given: {input_len} `inputs` tokens and {max_new} `max_new_tokens`"
        )
    if p.min_tokens > max_new:
        raise ValidationError(f"`min_tokens` must be less than or equal to `max_new_tokens`={max_new}. Given: {p.min_tokens}")
    if input_len > limits.max_input_tokens:
        raise ValidationError(f"`inputs` must have less than {limits.max_input_tokens} tokens. Given: {input_len}")
    if capacity_tokens is not None and input_len + max_new > capacity_tokens:
        raise ValidationError(
            f"`inputs` tokens + `max_new_tokens` = {input_len + max_new} exceeds the KV capacity of every "
            f"live worker ({capacity_tokens} tokens)"
        )
    params = SamplingParams(
        max_new_tokens=max_new,
        do_sample=p.samples,
        temperature=p.temperature if p.temperature is not None else 1.0,
        top_k=p.top_k or 0,
        top_p=p.top_p if p.top_p is not None else 1.0,
        typical_p=p.typical_p if p.typical_p is not None else 1.0,
        repetition_penalty=p.repetition_penalty if p.repetition_penalty is not None else 1.0,
        frequency_penalty=p.frequency_penalty or 0.0,
        presence_penalty=p.presence_penalty or 0.0,
        stop=p.stop,
        top_n_tokens=p.top_n_tokens or 0,
        prefill_logprobs=p.decoder_input_details,
        ignore_eos=p.ignore_eos,
        min_tokens=p.min_tokens,
        watermark=p.watermark,
        grammar=grammar,
    )
    return Validated(
        input_ids=input_ids,
        run_params=_with_seeds(params, p.seed, max(best_of, fan_out)),
        return_full_text=bool(p.return_full_text),
        details=p.details or p.decoder_input_details,
        decoder_input_details=p.decoder_input_details,
        input_text=req.inputs,
        priority=p.priority,
    )


def _check_parameters(p: GenerateParameters, config: GatewayConfig, limits: Limits, *, stream: bool) -> None:
    """TGI's checks that need no tokenizer, in TGI's order."""
    best_of = p.best_of or 1
    if best_of != 1:
        if stream:
            raise ValidationError("`best_of` != 1 is not supported when streaming tokens")
        if config.max_best_of == 1:
            raise ValidationError("`best_of` != 1 is not allowed for this endpoint")
        if best_of > config.max_best_of or best_of < 1:
            raise ValidationError(f"`best_of` must be > 0 and <= {config.max_best_of}. Given: {best_of}")
        if not p.samples:
            raise ValidationError("you must use sampling when `best_of` is > 1")
        if p.seed is not None:
            raise ValidationError("`seed` must not be set when `best_of` > 1")
    if p.grammar is not None and config.disable_grammar_support:
        raise ValidationError("grammar is not supported")
    if p.decoder_input_details and stream:
        raise ValidationError("`decoder_input_details` == true is not supported when streaming tokens")
    if p.decoder_input_details and not config.enable_prefill_logprobs:
        raise ValidationError("`decoder_input_details` == true needs the server to run with --enable-prefill-logprobs")
    if len(p.stop) > config.max_stop_sequences:
        raise ValidationError(
            f"`stop` supports up to {config.max_stop_sequences} stop sequences. Given: {len(p.stop)}"
        )
    top_n = p.top_n_tokens or 0
    if top_n > config.max_top_n_tokens:
        raise ValidationError(f"`top_n_tokens` must be >= 0 and <= {config.max_top_n_tokens}. Given: {top_n}")
    if p.truncate is not None and not 0 < p.truncate <= limits.max_input_tokens:
        raise ValidationError(
            f"`truncate` must be strictly positive and less than {limits.max_input_tokens}. Given: {p.truncate}"
        )


def _with_seeds(params: SamplingParams, seed: int | None, runs: int) -> tuple[SamplingParams, ...]:
    """Each run's own seed: the client's (or a random one, reported back in details.seed), + k for
    the k-th run so that best_of and n draw distinct samples. Greedy runs draw nothing: no seed."""
    if not params.do_sample:
        return (params,) * runs
    base = random.getrandbits(63) if seed is None else seed
    return tuple(msgspec.structs.replace(params, seed=(base + k) % _SEED_RANGE) for k in range(runs))
