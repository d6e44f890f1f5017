"""The fleet behind Redis Sentinel (--redis-url redis+sentinel://...): kill -9 the primary with 20
streams open. Every stream completes or ends with an explicit error (each counted), the sentinels
promote the replica, and gateway and workers find it by themselves: service is back without
restarting any genfleet process. The time to recover goes to docs/reliability.md."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from genfleet.embedded_redis import RedisBinaryNotFound
from load.redis_topology import LocalSentinels
from tests.integration.fleet import FleetProcesses
from tests.reliability.failover import primary_killed_under_streams

WORKER_ARGS = ("--synthetic-tokens-per-s", "20", "--max-batch-total-tokens", "65536")


@pytest.fixture
def sentinels() -> Iterator[LocalSentinels]:
    try:
        topology = LocalSentinels(down_after_ms=1000)
    except RedisBinaryNotFound as exc:
        pytest.skip(str(exc))
    with topology:
        yield topology


def test_primary_killed_with_20_streams_open(sentinels: LocalSentinels) -> None:
    fleet = FleetProcesses(sentinels.url, f"rs{uuid.uuid4().hex[:6]}")
    old_primary = sentinels.primary.port
    try:
        fleet.start(num_workers=1, worker_args=WORKER_ARGS)
        primary_killed_under_streams("sentinel failover", fleet, sentinels.primary.kill,
                                     lambda: sentinels.master_port() != old_primary)
    finally:
        fleet.stop()
