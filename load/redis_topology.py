"""Redis topologies on loopback for the tests and benchmarks: a three-primary Redis Cluster, and a
primary with a replica watched by three sentinels.

Each server is an EmbeddedRedis (genfleet/embedded_redis.py): the same binary `serve` would use,
a private directory, dead with its parent. The cluster is joined from here with CLUSTER
ADDSLOTSRANGE and CLUSTER MEET (no valkey-cli needed); the sentinels get a config file each,
since a sentinel rewrites its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import redis

from genfleet.embedded_redis import EmbeddedRedis, free_port

__all__ = ["LocalCluster", "LocalSentinels", "wait_for"]

_SLOTS = 16384


def wait_for(what: str, condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what}: not within {timeout}s")


class LocalCluster:
    """`primaries` servers with the 16384 slots split evenly, in order (node i serves slots_of(i)), and
    `replicas` replicas of each, which the cluster promotes when their primary dies."""

    def __init__(self, primaries: int = 3, replicas: int = 0) -> None:
        # The bus ports are named: the default (port + 10000) is past 65535 for a high free port.
        self.primaries = primaries
        self.bus_ports = [free_port() for _ in range(primaries * (1 + replicas))]
        # nodes[:primaries] are the primaries; nodes[primaries + k] replicates primary k % primaries.
        self.nodes = [
            EmbeddedRedis(appendonly=replicas > 0,
                          extra_args=("--cluster-enabled", "yes", "--cluster-node-timeout", "2000",
                                      "--cluster-config-file", "nodes.conf", "--cluster-port", str(bus)))
            for bus in self.bus_ports
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def slots_of(self, index: int) -> range:
        n = self.primaries
        return range(index * _SLOTS // n, (index + 1) * _SLOTS // n)

    def node_of_slot(self, slot: int) -> int:
        return next(i for i in range(self.primaries) if slot in self.slots_of(i))

    def start(self, timeout: float = 20.0) -> LocalCluster:
        for node in self.nodes:
            node.start()
        clients = [redis.Redis(port=node.port) for node in self.nodes]
        try:
            for i, client in enumerate(clients[:self.primaries]):
                slots = self.slots_of(i)
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", slots.start, slots.stop - 1)
            for node, bus in zip(self.nodes[1:], self.bus_ports[1:]):
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, bus)
            wait_for("every node knowing every other", lambda: all(
                _info(c)["cluster_known_nodes"] == str(len(self.nodes)) for c in clients), timeout)
            for k, client in enumerate(clients[self.primaries:]):
                primary_id = clients[k % self.primaries].execute_command("CLUSTER", "MYID")
                client.execute_command("CLUSTER", "REPLICATE", primary_id)
            wait_for("cluster_state:ok and every replica in sync", lambda: all(
                _info(c)["cluster_state"] == "ok" for c in clients) and all(
                c.info("replication").get("master_link_status") == "up" for c in clients[self.primaries:]), timeout)
        finally:
            for client in clients:
                client.close()
        return self

    def primary_ports(self) -> dict[int, int]:
        """Slot range start -> port of the node serving it now, as a live node sees the cluster."""
        for node in self.nodes:
            client = redis.Redis(port=node.port)
            try:
                return {int(start): int(nodes[0][1]) for start, _, *nodes in client.execute_command("CLUSTER", "SLOTS")}
            except (redis.RedisError, OSError):
                continue
            finally:
                client.close()
        return {}

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LocalSentinels:
    """A primary, one replica and `count` sentinels watching them as `master_name` (quorum 2)."""

    def __init__(self, master_name: str = "genfleet", count: int = 3, down_after_ms: int = 1000) -> None:
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.primary = EmbeddedRedis(appendonly=True)
        self.replica = EmbeddedRedis(appendonly=True, extra_args=("--replicaof", "127.0.0.1", str(self.primary.port)))
        self.sentinels = [EmbeddedRedis() for _ in range(count)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}"

    def start(self, timeout: float = 20.0) -> LocalSentinels:
        self.primary.start()
        self.replica.start()
        for sentinel in self.sentinels:
            conf = os.path.join(sentinel.dir, "sentinel.conf")
            with open(conf, "w") as f:
                f.write(
                    f"sentinel monitor {self.master_name} 127.0.0.1 {self.primary.port} 2\n"
                    f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}\n"
                    f"sentinel failover-timeout {self.master_name} 10000\n"
                    f"sentinel parallel-syncs {self.master_name} 1\n"
                )
            sentinel.config_file = conf
            sentinel.extra_args = ("--sentinel",)
            sentinel.start()
        replica = redis.Redis(port=self.replica.port)
        try:
            wait_for("the replica in sync", lambda: replica.info("replication").get("master_link_status") == "up",
                     timeout)
        finally:
            replica.close()
        wait_for("every sentinel knowing the replica and the other sentinels", lambda: all(
            self._sentinel_view(s) == (1, len(self.sentinels) - 1) for s in self.sentinels), timeout)
        return self

    def master_port(self, sentinel_index: int = 0) -> int:
        client = redis.Redis(port=self.sentinels[sentinel_index].port)
        try:
            _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
            return int(port)
        finally:
            client.close()

    def _sentinel_view(self, sentinel: EmbeddedRedis) -> tuple[int, int]:
        client = redis.Redis(port=sentinel.port)
        try:
            master = client.sentinel_master(self.master_name)
            return int(master["num-slaves"]), int(master["num-other-sentinels"])
        finally:
            client.close()

    def stop(self) -> None:
        for server in (*self.sentinels, self.replica, self.primary):
            server.stop()

    def __enter__(self) -> LocalSentinels:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _info(client: redis.Redis) -> dict[str, str]:
    text = client.execute_command("CLUSTER", "INFO")
    text = text.decode() if isinstance(text, bytes) else text
    return dict(line.split(":", 1) for line in text.split() if ":" in line)
