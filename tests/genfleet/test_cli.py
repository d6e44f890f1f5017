from __future__ import annotations

import pytest

from common.config import GatewayConfig, ServeConfig, WorkerConfig
from genfleet.cli import parse_configs
from genfleet.serve import child_argv


def test_flags_use_tgi_names_and_env_fallbacks() -> None:
    role, config = parse_configs(
        ["gateway", "--max-input-tokens", "100", "--port", "9000"],
        environ={"MAX_TOTAL_TOKENS": "300", "GENFLEET_API_KEY": "k", "HOSTNAME": "container-id"},
    )
    assert role == "gateway" and isinstance(config, GatewayConfig)
    assert config.fleet.max_input_tokens == 100 and config.fleet.max_total_tokens == 300
    assert config.port == 9000 and config.api_key == "k"
    assert config.hostname == "0.0.0.0"  # the bare HOSTNAME of a shell is never read


def test_flag_beats_env_and_booleans_parse() -> None:
    role, config = parse_configs(
        ["worker", "--max-batch-size", "8", "--prefix-caching", "false"],
        environ={"MAX_BATCH_SIZE": "64", "GENFLEET_JSON_OUTPUT": "true"},
    )
    assert isinstance(config, WorkerConfig)
    assert config.max_batch_size == 8 and config.prefix_caching is False and config.fleet.json_output


def test_bad_env_value_is_a_clear_error() -> None:
    from common.config import ConfigError

    with pytest.raises(ConfigError, match="MAX_BATCH_SIZE"):
        parse_configs(["worker"], environ={"MAX_BATCH_SIZE": "lots"})


def test_serve_children_get_exactly_the_parent_settings() -> None:
    _, config = parse_configs(["serve", "--workers", "2", "--max-batch-size", "4", "--port", "9100"], environ={})
    assert isinstance(config, ServeConfig) and config.workers == 2
    argv = child_argv("worker", config.worker, config.worker.fleet)
    _, child = parse_configs(argv[3:], environ={})
    assert child == config.worker
    argv = child_argv("gateway", config.gateway, config.gateway.fleet)
    _, child = parse_configs(argv[3:], environ={})
    assert child == config.gateway


def test_version_is_the_package_version() -> None:
    import importlib.metadata
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "genfleet", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"genfleet {importlib.metadata.version('genfleet')}"


def test_serve_installs_no_test_or_benchmark_tools() -> None:
    from pathlib import Path

    script = (Path(__file__).resolve().parents[2] / "scripts" / "bootstrap.sh").read_text()
    serve_extras = script.split("serve) EXTRAS=\"", 1)[1].split('"', 1)[0].split(",")
    assert not {"test", "load", "gpu"} & set(serve_extras), serve_extras
    assert "./scripts/bootstrap.sh serve" in (Path(__file__).resolve().parents[2] / "scripts" / "serve.sh").read_text()
