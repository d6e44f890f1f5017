"""`genfleet watermark-detect FILE`: score a text (or token ids) for the fleet's watermark, offline.

The same scoring as the gateway's `POST /watermark/detect` (common/watermark.py), with the model's
tokenizer and the fleet's --watermark-gamma; no torch, no Redis, no worker. Prints the result as
JSON; the exit status is 0 whether or not the text is watermarked.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import msgspec

from common import watermark
from common.config import FleetConfig
from common.model_source import resolve_model

__all__ = ["DetectJob", "run_detect"]


@dataclass(frozen=True)
class DetectJob:
    fleet: FleetConfig  # model (for its tokenizer) and watermark_gamma
    file: str  # the text to score; "-" reads stdin
    z_threshold: float
    token_ids: bool  # the file holds a JSON list of token ids instead of text


def run_detect(job: DetectJob) -> int:
    raw = sys.stdin.read() if job.file == "-" else Path(job.file).read_text(encoding="utf-8")
    if job.token_ids:
        ids = json.loads(raw)
        if not isinstance(ids, list) or not all(isinstance(i, int) and i >= 0 for i in ids):
            print("genfleet: error: --token-ids wants a JSON list of non-negative integers", file=sys.stderr)
            return 2
    else:
        from gateway.tokenizer import Tokenizer

        fleet = job.fleet
        tokenizer = Tokenizer(resolve_model(fleet.model_id, model_cache=fleet.model_cache, revision=fleet.revision))
        ids = tokenizer.encode(raw, add_special_tokens=False)
    result = watermark.score(ids, job.fleet.watermark_gamma, job.z_threshold)
    print(msgspec.json.encode(result).decode())
    return 0
