"""A TGI environment file never starts genfleet with settings silently dropped."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from common.config import FleetConfig, GatewayConfig, ServeConfig, WorkerConfig, settings_of
from common.env import env_names
from common.tgi_env import TGI_VARIABLES, ignored_tgi_variables, implemented_names
from genfleet.cli import main

# What a TGI deployment's env file typically holds, beside settings genfleet implements.
TGI_ENV_FILE = {
    "MODEL_ID": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "MAX_INPUT_TOKENS": "1024",
    "MAX_TOTAL_TOKENS": "2048",
    "DTYPE": "bfloat16",
    "QUANTIZE": "awq",
    "NUM_SHARD": "2",
    "SPECULATE": "2",
    "VALIDATION_WORKERS": "4",
    "OTLP_ENDPOINT": "http://collector:4317",
}


def test_every_tgi_setting_of_genfleet_is_a_tgi_variable() -> None:
    # A setting marked tgi=True answers to TGI's bare name: that name must be one TGI reads.
    known = {v.name for v in TGI_VARIABLES}
    for cls in (FleetConfig, GatewayConfig, WorkerConfig, ServeConfig):
        for f in settings_of(cls):
            bare = [n for n in env_names(f.name, f.metadata["tgi"]) if n == f.name.upper()]
            assert set(bare) <= known, f"{cls.__name__}.{f.name} claims a TGI name TGI does not have"


def test_implemented_is_derived_from_the_settings() -> None:
    implemented = implemented_names()
    assert {"MODEL_ID", "MAX_INPUT_TOKENS", "DTYPE", "PREFIX_CACHING"} <= implemented
    assert "HOSTNAME" not in implemented  # never read bare (every shell sets it)
    # Every TGI variable is either read by a setting, read by a library, or reported when set.
    for v in TGI_VARIABLES:
        reported = {i.variable.name for i in ignored_tgi_variables({v.name: "some-value"})}
        assert (v.name in reported) == (v.name not in implemented and not v.read_by_library), v.name


def test_results_changing_variables_are_errors_and_the_rest_warnings() -> None:
    ignored = {i.variable.name: i for i in ignored_tgi_variables(TGI_ENV_FILE)}
    implemented = implemented_names()
    for name in ("QUANTIZE", "NUM_SHARD", "SPECULATE"):
        if name not in implemented:
            assert ignored[name].is_error, name
            assert name in ignored[name].describe()
    assert not ignored["VALIDATION_WORKERS"].is_error and not ignored["OTLP_ENDPOINT"].is_error
    assert not {"MODEL_ID", "MAX_INPUT_TOKENS", "MAX_TOTAL_TOKENS", "DTYPE"} & ignored.keys()
    # Values that ask for what genfleet does anyway are not reported.
    assert not ignored_tgi_variables({"NUM_SHARD": "1", "SHARDED": "false", "SPECULATE": "0"})


def test_cli_refuses_to_start_and_names_each_dropped_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--device", "cpu"], environ=TGI_ENV_FILE) == 2
    err = capsys.readouterr().err
    for name in ("QUANTIZE", "NUM_SHARD", "SPECULATE"):
        if name not in implemented_names():
            assert f"{name}=" in err and "error" in err, err
    assert "warning: TGI setting VALIDATION_WORKERS='4'" in err and "warning: TGI setting OTLP_ENDPOINT=" in err
    assert "DTYPE=" not in err and "MAX_INPUT_TOKENS=" not in err


def test_env_values_are_checked_against_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker"], environ={"DTYPE": "float64"}) == 2
    assert "DTYPE='float64'" in capsys.readouterr().err


def test_serve_with_a_tgi_env_file_exits_at_once() -> None:
    env = {**os.environ, **TGI_ENV_FILE, "ROPE_SCALING": "dynamic"}
    proc = subprocess.run([sys.executable, "-m", "genfleet", "serve"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "ROPE_SCALING='dynamic'" in proc.stderr and "ignoring them would change results" in proc.stderr
