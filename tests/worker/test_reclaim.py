"""GatewayWatch against a real Redis: which requests' gateways are gone, after the grace period."""

from __future__ import annotations

import time

import redis

from common.protocol import GatewayInfo, encode
from common.streams import Keys
from worker.reclaim import GatewayWatch


def _beat(client: redis.Redis, keys: Keys, gid: str, started_at: float) -> None:
    client.set(keys.gateway_heartbeat(gid), encode(GatewayInfo(gid, 0, started_at, time.time())), px=60_000)


def test_expired_and_restarted_gateways_orphan_their_requests_after_the_grace(redis_url: str, key_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = Keys(key_prefix)
    watch = GatewayWatch(client, keys, grace=0.3)
    before = time.time() - 1
    _beat(client, keys, "g1", 100.0)
    _beat(client, keys, "g2", 200.0)
    owners = {"a": ("g1", before), "b": ("g2", before), "never-seen": ("g9", before)}
    assert watch.orphans(owners) == []
    client.delete(keys.gateway_heartbeat("g1"))  # g1 dies
    _beat(client, keys, "g2", 201.0)  # g2 restarts under its id: its old process's requests are lost
    assert watch.orphans(owners) == []  # within the grace period: another gateway may adopt them
    adopted_after_restart = {**owners, "c": ("g2", time.time())}
    deadline = time.monotonic() + 5
    found: list[str] = []
    while not found and time.monotonic() < deadline:
        time.sleep(0.05)
        found = watch.orphans(adopted_after_restart)
    assert sorted(found) == ["a", "b"]  # not c (the restarted g2's own), not an unseen gateway's
    client.close()
