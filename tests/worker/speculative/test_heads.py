"""Speculator heads: where they are found, what they compute, and the clear refusal of every
malformed checkpoint (a SpeculatorError naming the file and the problem, never a traceback from
deep inside torch)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from common.config import FleetConfig, WorkerConfig
from common.model_source import MEDUSA_FILE
from load.speculator_heads import write_medusa, write_mlp_speculator
from worker.models import ModelConfig
from worker.speculative.heads import SpeculatorError, find_speculator, load_speculator

H, V = 16, 11
TARGET = ModelConfig.from_dict({"architectures": ["LlamaForCausalLM"], "vocab_size": V, "hidden_size": H,
                                "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2})
CPU = torch.device("cpu")


class _Target:
    """The part of the target model the heads use: its LM head."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return (hidden @ self.weight.T).float()


def _load(directory: Path, speculate: int | None = None):  # type: ignore[no-untyped-def]
    return load_speculator(directory, TARGET, speculate, torch.float32, CPU)


def test_medusa_heads_compute_residual_blocks_then_a_projection(tmp_path: Path) -> None:
    write_medusa(tmp_path, H, V, heads=3, layers=2, own_projection=True, seed=1)
    heads = _load(tmp_path, speculate=2)
    assert heads.method == "medusa" and heads.num_heads == 2
    t = load_file(str(tmp_path / MEDUSA_FILE))
    hidden = torch.randn(5, H)
    want = []
    for i in range(2):
        x = hidden
        for j in range(2):
            x = x + F.silu(x @ t[f"{i}.{j}.linear.weight"].T + t[f"{i}.{j}.linear.bias"])
        want.append((x @ t[f"{i}.2.weight"].T).argmax(-1))
    lm = _Target(torch.randn(V, H))
    assert torch.equal(heads.propose(hidden, torch.zeros(5, dtype=torch.long), lm), torch.stack(want, 1))


def test_medusa_heads_without_projections_share_the_lm_head(tmp_path: Path) -> None:
    write_medusa(tmp_path, H, V, heads=2, own_projection=False, seed=2)
    heads = _load(tmp_path)
    t, lm, hidden = load_file(str(tmp_path / MEDUSA_FILE)), _Target(torch.randn(V, H)), torch.randn(4, H)
    x = hidden + F.silu(hidden @ t["1.0.linear.weight"].T + t["1.0.linear.bias"])
    assert torch.equal(heads.propose(hidden, torch.zeros(4, dtype=torch.long), lm)[:, 1], lm.compute_logits(x).argmax(-1))


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()


@pytest.mark.parametrize("tied", [False, True])
def test_the_mlp_speculator_chains_its_heads_through_their_drafts(tmp_path: Path, tied: bool) -> None:
    write_mlp_speculator(tmp_path, H, V, n_predict=3, inner=8, tie_weights=tied, scale_input=True, seed=3)
    heads = _load(tmp_path)
    assert heads.method == "mlp_speculator" and heads.num_heads == 3
    t = {k.removeprefix("speculator."): v for k, v in load_file(str(tmp_path / "model.safetensors")).items()}
    hidden, tokens = torch.randn(6, H), torch.randint(0, V, (6,))
    sw = 0.5 ** (0.5 / 3)
    ew = math.sqrt((1 - sw**2) * 8 / 2)
    state, token, want = _rms(hidden) / math.sqrt(2), tokens, []
    for i in range(3):
        e, p = (0, min(i, 1)) if tied else (i, i)
        state = state @ t[f"proj.{p}.weight"].T + t[f"emb.{e}.weight"][token] * ew / sw
        state = F.gelu(_rms(state) * t[f"ln.{e}.weight"] + t[f"ln.{e}.bias"])
        token = (state @ t[f"head.{e}.weight"].T).argmax(-1)
        want.append(token)
    assert torch.equal(heads.propose(hidden, tokens, _Target(torch.randn(V, H))), torch.stack(want, 1))


def test_speculate_above_the_heads_count_is_refused(tmp_path: Path) -> None:
    write_medusa(tmp_path / "m", H, V, heads=2, own_projection=False)
    write_mlp_speculator(tmp_path / "s", H, V, n_predict=2, inner=8)
    for path in (tmp_path / "m", tmp_path / "s"):
        with pytest.raises(SpeculatorError, match="Speculate is set to `3` but .* only has `2` heads"):
            _load(path, speculate=3)
        assert _load(path, speculate=0) is None


def _edit(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def test_malformed_medusa_heads_are_refused(tmp_path: Path) -> None:
    d = write_medusa(tmp_path / "a", H, V, heads=2, own_projection=True)
    _edit(d / MEDUSA_FILE, lambda t: t.pop("1.0.linear.bias"))
    with pytest.raises(SpeculatorError, match="'1.0.linear.bias' is missing"):
        _load(d)
    d = write_medusa(tmp_path / "b", H, V, heads=2, own_projection=True)
    _edit(d / MEDUSA_FILE, lambda t: t.update({"0.1.weight": torch.zeros(V + 1, H)}))
    with pytest.raises(SpeculatorError, match=r"'0.1.weight' .* shape \(12, 16\), the model needs \(11, 16\)"):
        _load(d)
    d = write_medusa(tmp_path / "c", H, V, heads=2, own_projection=True)
    _edit(d / MEDUSA_FILE, lambda t: t.pop("1.1.weight"))
    with pytest.raises(SpeculatorError, match="some heads have their own projection"):
        _load(d)
    d = write_medusa(tmp_path / "d", H, V, heads=2, own_projection=False)
    (d / MEDUSA_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(SpeculatorError, match="not a readable safetensors file"):
        _load(d)
    (d / MEDUSA_FILE).rename(d / "medusa_lm_head.pt")
    with pytest.raises(SpeculatorError, match="is a pickle, which is never loaded"):
        _load(d)
    (d / "config.json").write_text(json.dumps({"medusa_num_heads": "two"}))
    with pytest.raises(SpeculatorError, match="medusa_num_heads and medusa_num_layers must be integers"):
        _load(d)


def test_malformed_mlp_speculators_are_refused(tmp_path: Path) -> None:
    d = write_mlp_speculator(tmp_path / "a", H + 1, V, n_predict=2, inner=8)
    with pytest.raises(SpeculatorError, match="hidden size 17 and vocabulary 11; this model has 16 and 11"):
        _load(d)
    d = write_mlp_speculator(tmp_path / "b", H, V, n_predict=2, inner=8)
    _edit(d / "model.safetensors", lambda t: t.pop("speculator.head.1.weight"))
    with pytest.raises(SpeculatorError, match="'head.1.weight' is missing"):
        _load(d)
    _edit(d / "model.safetensors", lambda t: t.update({"speculator.head.1.weight": torch.zeros(V, 8, dtype=torch.int8)}))
    with pytest.raises(SpeculatorError, match="not floating point"):
        _load(d)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(config | {"n_predict": -1}))
    with pytest.raises(SpeculatorError, match="n_predict must be an integer >= 0"):
        _load(d)
    (d / "config.json").write_text(json.dumps(config | {"tie_weights": True, "n_predict": 1}))
    with pytest.raises(SpeculatorError, match="tie_weights needs n_predict >= 2"):
        _load(d)
    for f in d.glob("*.safetensors"):
        f.unlink()
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(SpeculatorError, match="no weights file"):
        _load(d)


def _config(model_id: Path, speculative_model: Path | None = None) -> WorkerConfig:
    from common.config import FleetConfig

    return WorkerConfig(fleet=FleetConfig(model_id=str(model_id)),
                        speculative_model=str(speculative_model) if speculative_model else None)


def test_heads_are_found_by_flag_by_model_id_or_beside_the_weights(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert find_speculator(_config(model), model) is None
    heads = write_mlp_speculator(tmp_path / "mlp", H, V, n_predict=2, inner=8, base=str(model))
    assert find_speculator(_config(model, heads), model) == heads  # --speculative-model
    assert find_speculator(_config(heads), model) == heads  # TGI: --model-id names the heads
    (model / "model.safetensors").write_bytes(b"")
    write_medusa(tmp_path / "medusa", H, V, heads=2, own_projection=False)
    (tmp_path / "medusa" / MEDUSA_FILE).rename(model / MEDUSA_FILE)
    assert find_speculator(_config(model), model) == model  # beside the model's weights
    assert _load(model).num_heads == 2  # counted from the file's tensor names: config.json is the model's
    with pytest.raises(SpeculatorError, match="holds neither Medusa heads"):
        find_speculator(_config(model, _plain(tmp_path / "plain")), model)
    with pytest.raises(SpeculatorError, match="not a directory"):
        find_speculator(_config(model, tmp_path / "nowhere"), model)


def test_a_model_id_that_cannot_be_found_names_no_heads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A runner built on a model directory with another --model-id (benches, tests on a card
    # without the default model cached) looks for heads beside the weights only.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = _plain(tmp_path / "model")
    config = WorkerConfig(fleet=FleetConfig(model_id="genfleet-tests/absent-model", model_cache=str(tmp_path)),
                          speculate=4)
    assert find_speculator(config, model) is None
    with pytest.raises(SpeculatorError):  # a named --speculative-model must exist
        find_speculator(replace(config, speculative_model=str(tmp_path / "absent-heads")), model)


def _plain(path: Path) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    return path


def test_a_worker_with_unservable_heads_exits_with_the_reason(tmp_path: Path, default_model_dir: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from common.config import FleetConfig
    from tests.worker.test_model_runner import _tiny_llama
    from worker.worker import run_worker

    model, _ = _tiny_llama(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the worker loads a tokenizer first
        shutil.copy(default_model_dir / name, model / name)
    heads = write_mlp_speculator(tmp_path / "mlp", 64, 97, n_predict=2, inner=8)
    _edit(heads / "model.safetensors", lambda t: t.pop("speculator.proj.1.weight"))
    config = WorkerConfig(fleet=FleetConfig(model_id=str(model)), device="cpu", speculative_model=str(heads))
    assert run_worker(config) == 2  # before it ever reaches Redis
    assert "'proj.1.weight' is missing" in capsys.readouterr().err


def test_heads_are_refused_on_a_sharded_worker(tmp_path: Path) -> None:
    from worker.speculative.heads import speculator_for

    heads = write_medusa(tmp_path / "m", H, V, heads=2, own_projection=False)
    config = WorkerConfig(speculative_model=str(heads))
    with pytest.raises(SpeculatorError, match="not served with --num-shard > 1"):
        speculator_for(config, tmp_path, TARGET, torch.float32, CPU, sharded=True)
    assert speculator_for(WorkerConfig(speculative_model=str(heads), speculate=0), tmp_path, TARGET, torch.float32,
                          CPU, sharded=True) is None
