"""A checkpoint's quantization settings, found where TGI looks for them.

config.json's `quantization_config`, else `quantize_config.json` (AutoGPTQ / GPTQModel), else
`quant_config.json` (AutoAWQ's `w_bit` / `q_group_size`). The result is that config's dict with
`quant_method` always set, so each method reads its own fields from one shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["read_checkpoint_quantization", "group_size_of"]


def read_checkpoint_quantization(model_dir: Path) -> dict[str, Any] | None:
    config = json.loads((model_dir / "config.json").read_text())
    found = config.get("quantization_config")
    if found:
        return dict(found)
    gptq = model_dir / "quantize_config.json"
    if gptq.is_file():
        raw = json.loads(gptq.read_text())
        return {"quant_method": "gptq", **raw}
    awq = model_dir / "quant_config.json"
    if awq.is_file():
        raw = json.loads(awq.read_text())
        return {
            "quant_method": "awq",
            "bits": raw.get("w_bit", raw.get("bits", 4)),
            "group_size": raw.get("q_group_size", raw.get("group_size", 128)),
            "zero_point": raw.get("zero_point", True),
            "version": raw.get("version", "gemm"),
        }
    return None


def group_size_of(value: Any, in_features: int) -> int:
    """A checkpoint's group size as a channel count: -1 (or None, 0) means one group per row."""
    size = int(value) if value is not None else -1
    return in_features if size <= 0 else size
