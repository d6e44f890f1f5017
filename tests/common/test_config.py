from __future__ import annotations

import pytest

from common.config import ConfigError, FleetConfig, GatewayConfig, WorkerConfig
from common.env import EnvSnapshot, env_names


def test_input_must_be_shorter_than_total() -> None:
    with pytest.raises(ConfigError, match="max_input_tokens"):
        FleetConfig(max_input_tokens=100, max_total_tokens=100)


def test_bad_values_are_refused() -> None:
    with pytest.raises(ConfigError):
        GatewayConfig(port=0)
    with pytest.raises(ConfigError):
        WorkerConfig(cuda_memory_fraction=1.5)
    with pytest.raises(ConfigError):
        FleetConfig(heartbeat_interval=5, heartbeat_ttl=1)


def test_configs_are_frozen() -> None:
    config = WorkerConfig()
    with pytest.raises(AttributeError):
        config.block_size = 32  # type: ignore[misc]


def test_cuda_graph_sizes() -> None:
    assert WorkerConfig(cuda_graphs="0").cuda_graph_sizes == ()
    assert WorkerConfig(cuda_graphs="8,1,4").cuda_graph_sizes == (1, 4, 8)


def test_env_names_prefer_prefix_and_never_read_bare_hostname() -> None:
    assert env_names("max_input_tokens", tgi=True) == ("GENFLEET_MAX_INPUT_TOKENS", "MAX_INPUT_TOKENS")
    assert env_names("hostname", tgi=True) == ("GENFLEET_HOSTNAME",)
    assert env_names("redis_url", tgi=False) == ("GENFLEET_REDIS_URL",)
    env = EnvSnapshot.capture({"MAX_INPUT_TOKENS": "5", "GENFLEET_MAX_INPUT_TOKENS": "7"})
    assert env.lookup("max_input_tokens", tgi=True) == ("GENFLEET_MAX_INPUT_TOKENS", "7")
