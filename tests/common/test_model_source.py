from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.model_source import MEDUSA_FILE, ModelNotFound, resolve_model, speculator_dir


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


@pytest.mark.parametrize("name", ["{tmp}/absent", "./absent/model", "absent/deeper/model"])
def test_a_path_to_nowhere_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    # Neither a directory nor a Hub id: a clear ModelNotFound, never huggingface_hub's own error.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    model_id = name.format(tmp=tmp_path)
    with pytest.raises(ModelNotFound, match="neither a local directory nor a Hub id|no such directory"):
        resolve_model(model_id, model_cache=str(tmp_path))


def _model(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (path / "model.safetensors").write_bytes(b"")
    return path


def test_a_heads_directory_resolves_to_its_base_model_as_in_tgi(tmp_path: Path) -> None:
    base = _model(tmp_path / "base")
    medusa, mlp = tmp_path / "medusa", tmp_path / "mlp"
    for path, config in ((medusa, {"medusa_num_heads": 3, "medusa_num_layers": 1, "base_model_name_or_path": str(base)}),
                         (mlp, {"model_type": "mlp_speculator", "n_predict": 3, "base_model_name_or_path": "../base"})):
        path.mkdir()
        (path / "config.json").write_text(json.dumps(config))
    (medusa / MEDUSA_FILE).write_bytes(b"")
    assert resolve_model(str(medusa)) == base
    assert resolve_model(str(mlp)).resolve() == base.resolve()  # relative to the heads' directory
    assert speculator_dir(str(medusa)) == medusa and speculator_dir(str(mlp)) == mlp
    assert speculator_dir(str(base)) is None


def test_medusa_heads_beside_a_models_weights_serve_that_model(tmp_path: Path) -> None:
    model = _model(tmp_path / "m")
    config = json.loads((model / "config.json").read_text()) | {"medusa_num_heads": 2, "medusa_num_layers": 1}
    (model / "config.json").write_text(json.dumps(config))
    (model / MEDUSA_FILE).write_bytes(b"")
    assert resolve_model(str(model)) == model and speculator_dir(str(model)) is None


def test_heads_without_a_base_model_are_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mlp_speculator", "n_predict": 2}))
    with pytest.raises(ModelNotFound, match="base_model_name_or_path"):
        resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"medusa_num_heads": 2, "base_model_name_or_path": "."}))
    with pytest.raises(ModelNotFound, match="heads' own directory"):
        resolve_model(str(tmp_path))


def test_default_model_converts_to_an_hf_directory(default_model_dir: Path) -> None:
    config = json.loads((default_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    assert (default_model_dir / "model.safetensors").is_file()
    assert (default_model_dir / "tokenizer.json").is_file() or (default_model_dir / "tokenizer_config.json").is_file()
