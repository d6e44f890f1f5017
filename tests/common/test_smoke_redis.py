from __future__ import annotations

import redis


def test_fixture_server_answers(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert client.ping()
    client.close()
