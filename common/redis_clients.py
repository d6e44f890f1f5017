"""Every Redis client of the fleet is made here, from `--redis-url` and `--redis-cluster`.

One server, a Redis Cluster (redis-py's RedisCluster: it follows MOVED / ASK and refreshes its slot
map when a primary fails over) or a Sentinel set (redis-py's Sentinel.master_for: every new
connection asks the sentinels where the primary is, so a promotion is followed on reconnect). The
rest of the code sees one client type per side (sync for the worker's threads, asyncio for the
gateway) and asks `is_cluster` only where a command differs: pub/sub, which is sharded in a
cluster (SSUBSCRIBE / SPUBLISH, so each gateway's token traffic stays on its channel's shard)
and plain elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.asyncio.sentinel as aiosentinel
import redis.cluster
import redis.sentinel

from common.redis_url import RedisAddress, parse_redis_url

__all__ = [
    "sync_client", "async_client", "is_cluster", "publish", "subscribe", "asubscribe",
    "next_message", "anext_message", "is_data", "is_subscribe", "quietly",
]

def quietly(call: Callable[[], object], log: logging.Logger) -> None:
    """A best-effort call on a sync client (a heartbeat, an XACK, a cleanup on exit): a Redis error
    is logged, not raised."""
    try:
        call()
    except redis.RedisError as exc:
        log.warning("Redis call failed: %s", exc)


def sync_client(url: str, cluster: bool = False, **options: Any) -> Any:
    """A blocking client; `options` are redis-py connection settings (timeouts, pool size)."""
    address = parse_redis_url(url, cluster)
    if address.kind == "cluster":
        return redis.cluster.RedisCluster.from_url(url, **options)
    if address.kind == "sentinel":
        sentinel = redis.sentinel.Sentinel(address.sentinels, sentinel_kwargs=_sentinel_options(address, options),
                                           **_server_options(address, options))
        return sentinel.master_for(address.master_name)
    return redis.Redis.from_url(url, **options)


def async_client(url: str, cluster: bool = False, **options: Any) -> Any:
    """An asyncio client; `options` as for `sync_client`."""
    address = parse_redis_url(url, cluster)
    if address.kind == "cluster":
        return aiocluster.RedisCluster.from_url(url, **options)
    if address.kind == "sentinel":
        sentinel = aiosentinel.Sentinel(address.sentinels, sentinel_kwargs=_sentinel_options(address, options),
                                        **_server_options(address, options))
        return sentinel.master_for(address.master_name)
    return aioredis.Redis.from_url(url, **options)


def is_cluster(client: object) -> bool:
    return isinstance(client, (redis.cluster.RedisCluster, aiocluster.RedisCluster,
                               redis.cluster.ClusterPipeline, aiocluster.ClusterPipeline))


def publish(target: Any, channel: str, data: bytes, sharded: bool) -> Any:
    """PUBLISH, or SPUBLISH in a cluster, on a client or a pipeline (await it on an asyncio client)."""
    return target.spublish(channel, data) if sharded else target.publish(channel, data)


def subscribe(pubsub: Any, channels: list[str], sharded: bool) -> None:
    if sharded:
        pubsub.ssubscribe(*channels)
    else:
        pubsub.subscribe(*channels)


async def asubscribe(pubsub: Any, channels: list[str], sharded: bool) -> None:
    if sharded:
        await pubsub.cluster.initialize()  # the slot map (a no-op once loaded): pub/sub does not load it
        await pubsub.ssubscribe(*channels)
    else:
        await pubsub.subscribe(*channels)


def next_message(pubsub: Any, timeout: float, sharded: bool) -> dict[str, Any] | None:
    message: dict[str, Any] | None
    if sharded:
        _check_sharded(pubsub)
        message = pubsub.get_sharded_message(timeout=timeout)
    else:
        message = pubsub.get_message(timeout=timeout)
    return message


async def anext_message(pubsub: Any, timeout: float, sharded: bool) -> dict[str, Any] | None:
    message: dict[str, Any] | None
    if sharded:
        _check_sharded(pubsub)
        message = await pubsub.get_sharded_message(timeout=timeout)
    else:
        message = await pubsub.get_message(timeout=timeout)
    return message


def is_data(message: dict[str, Any]) -> bool:
    return _type(message) in ("message", "smessage")


def is_subscribe(message: dict[str, Any]) -> bool:
    """A subscription confirmed, the first or one redis-py made again after reconnecting by itself."""
    return _type(message) in ("subscribe", "ssubscribe")


def _check_sharded(pubsub: Any) -> None:
    # A shard that hands its slot over (failover, resharding) ends our subscription there; once
    # redis-py has dropped its last node connection it would return None at once, for ever.
    if not pubsub.node_pubsub_mapping:
        raise redis.ConnectionError("the sharded subscription has no node left; subscribing again")


def _type(message: dict[str, Any]) -> str:
    kind = message.get("type")
    return kind.decode() if isinstance(kind, bytes) else str(kind)


def _server_options(address: RedisAddress, options: dict[str, Any]) -> dict[str, Any]:
    return {**options, **address.options, "db": address.db,
            **_auth(address.username, address.password, address.tls)}


def _sentinel_options(address: RedisAddress, options: dict[str, Any]) -> dict[str, Any]:
    timeouts = {k: v for k, v in options.items() if k in ("socket_timeout", "socket_connect_timeout")}
    tls_options = {k: v for k, v in address.options.items() if k.startswith("ssl")}
    return {**timeouts, **tls_options, **_auth(address.sentinel_username, address.sentinel_password, address.tls)}


def _auth(username: str | None, password: str | None, tls: bool) -> dict[str, Any]:
    auth: dict[str, Any] = {"ssl": True} if tls else {}
    if username is not None:
        auth["username"] = username
    if password is not None:
        auth["password"] = password
    return auth
