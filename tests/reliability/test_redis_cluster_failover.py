"""A Redis Cluster primary killed (kill -9) with 20 streams open: its replica is promoted by the
cluster, every stream completes or ends with an explicit error, and gateway and worker follow the
new slot map by themselves (synthetic workers; the killed primary holds both the model's stream
and the gateway's sharded channel)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from redis.crc import key_slot

from common.config import DEFAULT_MODEL_ID
from common.streams import Keys
from genfleet.embedded_redis import RedisBinaryNotFound
from load.redis_topology import LocalCluster
from tests.integration.fleet import FleetProcesses
from tests.reliability.failover import primary_killed_under_streams

WORKER_ARGS = ("--redis-cluster", "--synthetic-tokens-per-s", "20", "--max-batch-total-tokens", "65536")


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    try:
        topology = LocalCluster(3, replicas=1)
    except RedisBinaryNotFound as exc:
        pytest.skip(str(exc))
    with topology:
        yield topology


def test_primary_of_the_models_stream_killed_with_20_streams_open(cluster: LocalCluster) -> None:
    prefix = next(p for p in (f"cf{uuid.uuid4().hex[:6]}" for _ in range(1000))
                  if _primary(cluster, Keys(p).request_stream(DEFAULT_MODEL_ID))
                  == _primary(cluster, Keys(p).gateway_channel(f"{p}-g0")))  # FleetProcesses' gateway id
    owner = _primary(cluster, Keys(prefix).request_stream(DEFAULT_MODEL_ID))
    start, old_port = cluster.slots_of(owner).start, cluster.nodes[owner].port
    # The processes' address of the cluster: a node that stays up (any node would do for a client
    # already connected, but a new one needs a live startup node).
    fleet = FleetProcesses(cluster.nodes[(owner + 1) % cluster.primaries].url, prefix)
    try:
        fleet.start(num_workers=1, worker_args=WORKER_ARGS, gateway_args=("--redis-cluster",))
        primary_killed_under_streams("cluster failover", fleet, cluster.nodes[owner].kill,
                                     lambda: cluster.primary_ports().get(start) not in (None, old_port), cluster=True)
    finally:
        fleet.stop()


def _primary(cluster: LocalCluster, key: str) -> int:
    return cluster.node_of_slot(key_slot(key.encode()))
