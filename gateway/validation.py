"""From a parsed request to what goes on the wire: TGI's checks, tokenization and length limits.

Order follows TGI: cheap parameter checks, then tokenization (with truncation), then the total
length check, then the input length check — all before anything is queued.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from common.config import GatewayConfig
from common.errors import ValidationError
from common.sampling_params import SamplingParams
from gateway.schemas import GenerateInput
from gateway.tokenizer import Tokenizer

__all__ = ["Limits", "Validated", "validate"]


@dataclass(frozen=True)
class Limits:
    max_input_tokens: int
    max_total_tokens: int


@dataclass(frozen=True)
class Validated:
    input_ids: list[int]
    params: SamplingParams
    best_of: int
    return_full_text: bool
    details: bool
    decoder_input_details: bool
    input_text: str


def validate(
    req: GenerateInput, config: GatewayConfig, limits: Limits, tokenizer: Tokenizer, *,
    stream: bool, capacity_tokens: int | None = None, add_special_tokens: bool = True,
) -> Validated:
    p = req.parameters
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
    samples = p.samples
    seed = p.seed
    if samples and seed is None:
        seed = random.getrandbits(63)  # reported back in details.seed
    params = SamplingParams(
        max_new_tokens=max_new,
        do_sample=samples,
        temperature=p.temperature if p.temperature is not None else 1.0,
        top_k=p.top_k or 0,
        top_p=p.top_p if p.top_p is not None else 1.0,
        typical_p=p.typical_p if p.typical_p is not None else 1.0,
        repetition_penalty=p.repetition_penalty if p.repetition_penalty is not None else 1.0,
        frequency_penalty=p.frequency_penalty or 0.0,
        presence_penalty=p.presence_penalty or 0.0,
        seed=seed if samples else None,
        stop=p.stop,
        top_n_tokens=top_n,
        prefill_logprobs=p.decoder_input_details,
        ignore_eos=p.ignore_eos,
        min_tokens=p.min_tokens,
    )
    return Validated(
        input_ids=input_ids,
        params=params,
        best_of=best_of,
        return_full_text=bool(p.return_full_text),
        details=p.details or p.decoder_input_details,
        decoder_input_details=p.decoder_input_details,
        input_text=req.inputs,
    )
