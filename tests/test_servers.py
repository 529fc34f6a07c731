"""The test servers themselves start, answer and stop (see _servers.py)."""

from __future__ import annotations


def test_redis_server_answers(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        assert client.ping() is True
    finally:
        client.close()


def test_postgres_server_answers(postgres_dsn: str) -> None:
    import psycopg

    with psycopg.connect(postgres_dsn, connect_timeout=5) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
