from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.model_source import ModelNotFound, resolve_model


def test_local_directory_is_used_as_is(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert resolve_model(str(tmp_path)) == tmp_path


def test_directory_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="config.json"):
        resolve_model(str(tmp_path))


def test_unreachable_hub_model_names_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match="someone/not-a-real-model"):
        resolve_model("someone/not-a-real-model", model_cache=str(tmp_path))


def test_default_model_converts_to_an_hf_directory(default_model_dir: Path) -> None:
    config = json.loads((default_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    assert (default_model_dir / "model.safetensors").is_file()
    assert (default_model_dir / "tokenizer.json").is_file() or (default_model_dir / "tokenizer_config.json").is_file()
