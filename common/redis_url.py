"""What `--redis-url` (with `--redis-cluster`) names: one server, a Redis Cluster, or a Sentinel set.

Pure parsing, no connection: the configs call `parse_redis_url` in `__post_init__`, so a bad URL is
an error at start-up that names the URL's problem, never a traceback from the first command.

    redis://[user:password@]host:port[/db]         one server (rediss:// for TLS, unix:// a socket)
    redis://host:port --redis-cluster              any node of a Redis Cluster (db 0 only)
    redis+sentinel://[user:password@]h1:p1,h2:p2/<master-name>[/db]
                                                   the primary that these sentinels elect
                                                   (rediss+sentinel:// for TLS to every server)

The credentials in the URL are those of the data servers (ACL user and password). Sentinels that
want their own take `?sentinel_username=...&sentinel_password=...`; every other query parameter
(ssl_ca_certs, ssl_cert_reqs, ...) goes to redis-py as it does in a plain URL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["RedisAddress", "RedisUrlError", "parse_redis_url"]

_PLAIN_SCHEMES = ("redis", "rediss", "unix")
_SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
_DEFAULT_PORT = 6379
_DEFAULT_SENTINEL_PORT = 26379


class RedisUrlError(ValueError):
    pass


@dataclass(frozen=True)
class RedisAddress:
    kind: Literal["single", "cluster", "sentinel"]
    url: str  # the URL as given (single, cluster), for redis-py's own from_url
    sentinels: tuple[tuple[str, int], ...] = ()  # sentinel only
    master_name: str = ""  # sentinel only
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    options: dict[str, str] = field(default_factory=dict)  # the other query parameters (sentinel)


def parse_redis_url(url: str, cluster: bool = False) -> RedisAddress:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in _SENTINEL_SCHEMES:
        if cluster:
            raise RedisUrlError("--redis-cluster takes a redis:// or rediss:// URL of a cluster node, not a "
                                "Sentinel URL")
        return _sentinel(url, scheme)
    if scheme not in _PLAIN_SCHEMES:
        raise RedisUrlError(f"--redis-url {_redacted(url)!r}: the scheme must be one of redis://, rediss://, "
                            "unix://, redis+sentinel:// or rediss+sentinel://")
    parts = urlsplit(url)
    if scheme != "unix":
        _host_port(parts.netloc.rpartition("@")[2], _DEFAULT_PORT, url)
    db = _db(parts.path.strip("/"), url) if scheme != "unix" else 0
    if cluster:
        if scheme == "unix":
            raise RedisUrlError("--redis-cluster needs a TCP address (redis:// or rediss://) of a cluster node")
        if db != 0:
            raise RedisUrlError(f"--redis-url {_redacted(url)!r}: a Redis Cluster has database 0 only")
    return RedisAddress("cluster" if cluster else "single", url, db=db, tls=scheme == "rediss")


def _sentinel(url: str, scheme: str) -> RedisAddress:
    rest = url.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    if not hosts:
        raise RedisUrlError(f"--redis-url {_redacted(url)!r}: name at least one sentinel as host:port")
    sentinels = tuple(_host_port(h, _DEFAULT_SENTINEL_PORT, url) for h in hosts.split(","))
    segments = [s for s in path.split("/") if s]
    if not segments or len(segments) > 2:
        raise RedisUrlError(f"--redis-url {_redacted(url)!r}: the path must be /<master-name> or "
                            "/<master-name>/<db>")
    username, password = _credentials(userinfo)
    options = dict(parse_qsl(query, keep_blank_values=True))
    return RedisAddress(
        "sentinel", url, sentinels, unquote(segments[0]),
        db=_db(segments[1], url) if len(segments) == 2 else 0,
        username=username, password=password, tls=scheme == "rediss+sentinel",
        sentinel_username=options.pop("sentinel_username", None),
        sentinel_password=options.pop("sentinel_password", None),
        options=options,
    )


def _host_port(text: str, default_port: int, url: str) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise RedisUrlError(f"--redis-url {_redacted(url)!r}: {text!r} has no host")
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise RedisUrlError(f"--redis-url {_redacted(url)!r}: {port!r} is not a port (1..65535)")
    return host, int(port)


def _db(text: str, url: str) -> int:
    if not text:
        return 0
    if not text.isdigit():
        raise RedisUrlError(f"--redis-url {_redacted(url)!r}: the database must be a number, got {text!r}")
    return int(text)


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, sep, password = userinfo.partition(":")
    if not sep:  # redis://secret@host, as redis-py reads it: a password without a user
        return None, unquote(user)
    return (unquote(user) or None), unquote(password)


def _redacted(url: str) -> str:
    """The URL with its password replaced, fit for an error message or a log line."""
    head, sep, rest = url.partition("://")
    userinfo, at, hosts = rest.partition("@")
    if not sep or not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{head}://{user + ':***' if colon else '***'}@{hosts}"
