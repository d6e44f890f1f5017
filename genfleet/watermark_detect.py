"""`genfleet watermark-detect FILE`: score a text (or token ids) for the fleet's watermark, offline.

The same validation and scoring as the gateway's `POST /watermark/detect`
(gateway/routes_watermark.py), with the model's tokenizer and the fleet's --watermark-gamma; no
torch, no Redis, no worker. Prints the result as JSON; the exit status is 0 whether or not the text
is watermarked, 2 for input it cannot score.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from common.config import FleetConfig
from common.errors import GenfleetError
from common.model_source import ModelNotFound, resolve_model

__all__ = ["DetectJob", "run_detect"]


@dataclass(frozen=True)
class DetectJob:
    fleet: FleetConfig  # model (for its tokenizer) and watermark_gamma
    file: str  # the text to score; "-" reads stdin
    z_threshold: float
    token_ids: bool  # the file holds a JSON list of token ids instead of text


def run_detect(job: DetectJob) -> int:
    from gateway.routes_watermark import parse_detect, score_input
    from gateway.tokenizer import Tokenizer

    body: dict[str, Any] = {"z_threshold": job.z_threshold}
    try:
        raw = sys.stdin.read() if job.file == "-" else Path(job.file).read_text(encoding="utf-8")
        body["token_ids" if job.token_ids else "inputs"] = json.loads(raw) if job.token_ids else raw
        parsed = parse_detect(body)
        tokenizer = None
        if parsed.inputs is not None:
            fleet = job.fleet
            tokenizer = Tokenizer(resolve_model(fleet.model_id, model_cache=fleet.model_cache, revision=fleet.revision,
                                                weights=False))
        result = score_input(parsed, job.fleet.watermark_gamma, tokenizer)
    except (ValueError, OSError, ModelNotFound, GenfleetError) as exc:  # bad file, ids or model; refused text
        print(f"genfleet: error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    print(msgspec.json.encode(result).decode())
    return 0
