"""Which method a model gets: the checkpoint's own, a flag that agrees, or a clear start-up error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import ConfigError, WorkerConfig
from worker.quant import METHODS, QuantizationError, read_checkpoint_quantization, select_method

AWQ = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}


def test_no_flag_follows_the_checkpoint() -> None:
    assert select_method(None, None) is None
    method = select_method(None, AWQ)
    assert method is not None and method.name == "awq"
    assert select_method("awq", AWQ).name == "awq"  # type: ignore[union-attr]


def test_a_flag_that_contradicts_the_checkpoint_is_named() -> None:
    ct = {"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {}}
    with pytest.raises(QuantizationError, match="contradicts the checkpoint, which is quantized with"):
        select_method("awq", ct)
    with pytest.raises(QuantizationError, match="needs a checkpoint quantized with awq"):
        select_method("awq", None)


def test_unknown_checkpoint_formats_and_missing_methods_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(QuantizationError, match=r"quantized with hqq, which this build cannot load"):
        select_method(None, {"quant_method": "hqq"})
    with pytest.raises(QuantizationError, match="'gemv'"):
        select_method(None, {**AWQ, "version": "gemv"})
    monkeypatch.delitem(METHODS, "awq")
    with pytest.raises(QuantizationError, match=r"--quantize awq is not implemented in this build; implemented: "):
        select_method("awq", AWQ)


def test_exl2_is_refused_with_alternatives() -> None:
    with pytest.raises(ConfigError, match="exl2 is not supported.*gptq"):
        WorkerConfig(quantize="exl2")


def test_config_is_found_where_tgi_looks(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert read_checkpoint_quantization(tmp_path) is None
    (tmp_path / "quant_config.json").write_text(json.dumps({"w_bit": 4, "q_group_size": 64, "zero_point": True,
                                                            "version": "GEMM"}))
    assert read_checkpoint_quantization(tmp_path) == {"quant_method": "awq", "bits": 4, "group_size": 64,
                                                      "zero_point": True, "version": "GEMM"}
    (tmp_path / "quantize_config.json").write_text(json.dumps({"bits": 4, "group_size": 128, "desc_act": True}))
    assert read_checkpoint_quantization(tmp_path) == {"quant_method": "gptq", "bits": 4, "group_size": 128,
                                                      "desc_act": True}
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": AWQ}))
    assert read_checkpoint_quantization(tmp_path) == AWQ


@pytest.mark.timeout(120)
def test_worker_start_error_is_one_line_and_exit_2(tmp_path: Path, default_model_dir: Path) -> None:
    from tests.worker.quant.harness import tiny_model

    dense = tiny_model(tmp_path)
    for f in default_model_dir.glob("tokenizer*"):
        shutil.copy(f, dense / f.name)
    for flag, expected in (("exl2", "exl2 is not supported"), ("awq", "needs a checkpoint quantized with awq")):
        proc = subprocess.run(
            [sys.executable, "-m", "genfleet", "worker", "--model-id", str(dense), "--quantize", flag, "--device", "cpu"],
            capture_output=True, text=True, timeout=110, env={**os.environ, "GENFLEET_LOG_LEVEL": "error"},
        )
        assert proc.returncode == 2, proc.stderr
        assert expected in proc.stderr and "Traceback" not in proc.stderr
