import json
from pathlib import Path

from load.shapes import SHAPES, write_model_dir


def test_a_shape_alone_keeps_its_own_ids(tmp_path: Path) -> None:
    path = write_model_dir(tmp_path, "llama-3.1-8b")
    assert json.loads((path / "config.json").read_text()) == SHAPES["llama-3.1-8b"]
    assert sorted(p.name for p in path.iterdir()) == ["config.json"]


def test_a_borrowed_tokenizer_brings_its_files_and_its_special_ids(tmp_path: Path) -> None:
    # The 8B shape's EOS (128001) lies outside a 49,152-token tokenizer: the grammar compiler
    # refuses such an id, so the directory must carry the tokenizer's own.
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    (tok / "tokenizer_config.json").write_text("{}")
    (tok / "chat_template.jinja").write_text("{{ messages }}")
    (tok / "model.safetensors").write_bytes(b"not copied")
    (tok / "config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "vocab_size": 49152}))
    path = write_model_dir(tmp_path / "out", "llama-3.1-8b", tok)
    config = json.loads((path / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    assert config["vocab_size"] == SHAPES["llama-3.1-8b"]["vocab_size"]  # the shape is unchanged otherwise
    assert sorted(p.name for p in path.iterdir()) == [
        "chat_template.jinja", "config.json", "tokenizer.json", "tokenizer_config.json"]
    assert SHAPES["llama-3.1-8b"]["eos_token_id"] == 128001  # the shared table is not mutated
