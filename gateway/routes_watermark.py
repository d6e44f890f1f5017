"""POST /watermark/detect: does a text carry this fleet's watermark? (TGI has no detector.)

The text is tokenized as prompts are, without special tokens, and scored in plain Python by
common/watermark.py against the fleet's --watermark-gamma: the green lists are a hash that gives
the same bits on every worker's device, so no torch and no worker is needed here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from common import watermark
from common.errors import ValidationError
from gateway.admission import parse_json
from gateway.context import ctx_of
from gateway.models import MODEL_HEADER
from gateway.tokenizer import Tokenizer
from gateway.validation import off_loop

__all__ = ["WatermarkDetectInput", "parse_detect", "score_input", "watermark_detect"]


@dataclass(frozen=True)
class WatermarkDetectInput:
    inputs: str | None = None  # the text to score; or
    token_ids: list[int] | None = None  # the token ids to score (exactly one of the two)
    z_threshold: float = watermark.DEFAULT_Z_THRESHOLD  # `watermarked` is z_score > this


def parse_detect(body: Any) -> WatermarkDetectInput:
    if not isinstance(body, dict):
        raise ValidationError("expected a JSON object with `inputs` or `token_ids`")
    inputs, ids = body.get("inputs"), body.get("token_ids")
    if (inputs is None) == (ids is None):
        raise ValidationError("give exactly one of `inputs` (a string) and `token_ids` (a list of integers)")
    if inputs is not None and not isinstance(inputs, str):
        raise ValidationError(f"`inputs` must be a string, got {type(inputs).__name__}")
    if ids is not None and not (
        isinstance(ids, list) and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 1 << 63 for i in ids)
    ):
        raise ValidationError("`token_ids` must be a list of non-negative integers")
    z = body.get("z_threshold", watermark.DEFAULT_Z_THRESHOLD)
    if isinstance(z, bool) or not isinstance(z, (int, float)) or not math.isfinite(z):
        raise ValidationError("`z_threshold` must be a number")
    return WatermarkDetectInput(inputs, ids, float(z))


async def watermark_detect(request: Request) -> Response:
    ctx = ctx_of(request)
    body = await ctx.bodies.read(request)
    parsed = parse_detect(parse_json(body))
    gamma = ctx.config.fleet.watermark_gamma
    tokenizer = (await ctx.models.get(request.headers.get(MODEL_HEADER))).tokenizer
    result = await off_loop(lambda: score_input(parsed, gamma, tokenizer), len(body))
    return Response(msgspec.json.encode(result), media_type="application/json")


def score_input(parsed: WatermarkDetectInput, gamma: float, tokenizer: Tokenizer | None) -> watermark.WatermarkScore:
    """The route's and `genfleet watermark-detect`'s scoring; a text needs the tokenizer."""
    if parsed.inputs is None:
        ids = parsed.token_ids or []
    elif tokenizer is None:
        raise ValueError("scoring a text needs the model's tokenizer")
    else:
        ids = tokenizer.encode(parsed.inputs, add_special_tokens=False)
    return watermark.score(ids, gamma, parsed.z_threshold)
