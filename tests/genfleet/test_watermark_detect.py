"""`genfleet watermark-detect FILE`: the offline detector, as a real subprocess and in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common import watermark as wm
from genfleet.cli import main, parse_configs
from genfleet.watermark_detect import DetectJob
from tests.common.test_watermark import _all_green


def test_token_ids_file_of_green_tokens_is_flagged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ids.json"
    path.write_text(json.dumps(_all_green(65, 0.25)))
    assert main(["watermark-detect", str(path), "--token-ids", "--watermark-gamma", "0.25"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_tokens_scored"] == 64 and result["green_fraction"] == 1.0 and result["watermarked"]
    assert result["z_score"] == pytest.approx(64 * 0.75 / (64 * 0.25 * 0.75) ** 0.5)
    # gamma's lists are nested (a token green at 0.25 is green at 0.5): against 0.5, z = sqrt(64).
    assert main(["watermark-detect", str(path), "--token-ids"]) == 0
    assert json.loads(capsys.readouterr().out)["z_score"] == pytest.approx(8.0)


def test_flags_and_env_reach_the_job() -> None:
    role, job = parse_configs(["watermark-detect", "-", "--z-threshold", "2.5"], environ={"WATERMARK_GAMMA": "0.3"})
    assert role == "watermark-detect" and isinstance(job, DetectJob)
    assert job.file == "-" and job.z_threshold == 2.5 and job.fleet.watermark_gamma == 0.3 and not job.token_ids
    assert parse_configs(["watermark-detect", "f"], environ={})[1].z_threshold == wm.DEFAULT_Z_THRESHOLD


def test_bad_token_ids_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ids.json"
    path.write_text('{"not": "a list"}')
    assert main(["watermark-detect", str(path), "--token-ids"]) == 2
    assert "`token_ids` must be a list of non-negative integers" in capsys.readouterr().err
    path.write_text("[1, 2")
    assert main(["watermark-detect", str(path), "--token-ids"]) == 2
    assert main(["watermark-detect", str(tmp_path / "missing.txt")]) == 2


def test_plain_text_through_the_real_command(default_model_dir: Path) -> None:
    text = "The quick brown fox jumps over the lazy dog, and then it runs far away into the forest."
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-m", "genfleet", "watermark-detect", "-", "--model-id", str(default_model_dir)],
        input=text, capture_output=True, text=True, timeout=120, env=env, check=True,
    )
    result = json.loads(done.stdout)
    assert set(result) == {"z_score", "p_value", "num_tokens_scored", "green_fraction", "watermarked"}
    assert 15 <= result["num_tokens_scored"] <= 25 and not result["watermarked"]
