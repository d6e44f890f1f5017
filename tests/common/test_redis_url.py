from __future__ import annotations

import pytest

from common.config import ConfigError, FleetConfig
from common.redis_url import RedisUrlError, parse_redis_url


def test_plain_urls_keep_redis_pys_own_form() -> None:
    a = parse_redis_url("rediss://app:s3cret@cache.internal:6380/2")
    assert (a.kind, a.db, a.tls) == ("single", 2, True)
    assert parse_redis_url("unix:///run/redis.sock").kind == "single"
    assert parse_redis_url("redis://10.0.0.1:7000", cluster=True).kind == "cluster"


def test_sentinel_url_names_hosts_master_credentials_and_db() -> None:
    a = parse_redis_url("rediss+sentinel://app:p%40ss@s1:26379,s2,[::1]:26380/mymaster/3"
                        "?sentinel_password=sp&ssl_cert_reqs=none")
    assert a.kind == "sentinel"
    assert a.sentinels == (("s1", 26379), ("s2", 26379), ("::1", 26380))
    assert (a.master_name, a.db, a.username, a.password, a.tls) == ("mymaster", 3, "app", "p@ss", True)
    assert (a.sentinel_username, a.sentinel_password) == (None, "sp")
    assert a.options == {"ssl_cert_reqs": "none"}


@pytest.mark.parametrize("url, cluster, words", [
    ("http://h:6379", False, "scheme"),
    ("redis://h:notaport", False, "not a port"),
    ("redis://h:70000", False, "not a port"),
    ("redis://h:6379/x", False, "database must be a number"),
    ("redis://h:6379/1", True, "database 0 only"),
    ("unix:///tmp/r.sock", True, "TCP address"),
    ("redis+sentinel://s1:26379", False, "/<master-name>"),
    ("redis+sentinel:///mymaster", False, "at least one sentinel"),
    ("redis+sentinel://s1:26379/m", True, "not a Sentinel URL"),
])
def test_bad_urls_are_named_errors(url: str, cluster: bool, words: str) -> None:
    with pytest.raises(RedisUrlError, match=words):
        parse_redis_url(url, cluster)


def test_the_config_refuses_a_bad_url_at_start_and_hides_the_password() -> None:
    with pytest.raises(ConfigError) as err:
        FleetConfig(redis_url="redis://u:hunter2@h:port")
    assert "hunter2" not in str(err.value) and "***" in str(err.value)
    with pytest.raises(ConfigError, match="needs --redis-url"):
        FleetConfig(redis_cluster=True)
    with pytest.raises(ConfigError, match="stream-partitions"):
        FleetConfig(stream_partitions=0)
