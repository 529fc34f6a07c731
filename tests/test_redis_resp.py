"""plait's own Redis client: the RESP2 codec, and the client on real servers.

The codec is checked against a reference encoder written here from the
protocol's description; the client against the session's redis-server, a
private one (passwords, restarts, ``SCRIPT FLUSH``), and plain anyio
listeners that never answer or answer nonsense.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import plait
from _servers import need_module
from plait import Call, Engine, MapReduce, Var
from plait.redis import RedisLimits
from plait.redis._client import MAX_IDLE, ScriptClient
from plait.redis._resp import NOT_YET, ProtocolError, Reader, ReplyError, command

redis = need_module("redis")


# -- the codec ------------------------------------------------------------------


class Simple(str):
    """A simple-string reply (``+OK``), told apart from a bulk one in tests."""


def encode(value: Any) -> bytes:
    """A reply as a Redis server sends it (the reference for the reader)."""
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, bool):
        raise TypeError(value)
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, bytes):
        return b"$%d\r\n%b\r\n" % (len(value), value)
    if isinstance(value, Simple):
        return b"+" + value.encode() + b"\r\n"
    if isinstance(value, ReplyError):
        return b"-" + value.message.encode() + b"\r\n"
    assert isinstance(value, list)
    return b"*%d\r\n" % len(value) + b"".join(encode(v) for v in value)


def comparable(value: Any) -> Any:
    if isinstance(value, ReplyError):
        return ("error", value.message)
    if isinstance(value, list):
        return [comparable(v) for v in value]
    if isinstance(value, str):
        return ("simple", str(value))
    return value


line = st.text(
    st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
    max_size=20,
)
replies = st.recursive(
    st.none()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.binary(max_size=40)
    | line.map(Simple)
    | line.filter(lambda s: s[:1] not in ("", " ")).map(ReplyError),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=12,
)


def read_all(reader: Reader) -> list[Any]:
    out = []
    while (reply := reader.reply()) is not NOT_YET:
        out.append(reply)
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(replies, min_size=1, max_size=3))
def test_replies_read_back_whatever_the_pieces_they_arrive_in(
    values: list[Any],
) -> None:
    wire = b"".join(encode(v) for v in values)
    expected = [comparable(v) for v in values]
    for cut in range(len(wire) + 1):
        reader = Reader()
        reader.feed(wire[:cut])
        got = read_all(reader)
        reader.feed(wire[cut:])
        got += read_all(reader)
        assert [comparable(v) for v in got] == expected
        assert reader.pending == 0


@settings(max_examples=30, deadline=None)
@given(replies)
def test_a_reply_fed_byte_by_byte_reads_back(value: Any) -> None:
    reader = Reader()
    got = []
    for byte in encode(value):
        reader.feed(bytes([byte]))
        got += read_all(reader)
    assert [comparable(v) for v in got] == [comparable(value)]


arguments = st.lists(
    st.text(max_size=12)
    | st.binary(max_size=12)
    | st.integers()
    | st.floats(allow_nan=False),
    min_size=1,
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(arguments)
def test_a_command_is_an_array_of_bulk_strings(args: list[Any]) -> None:
    reader = Reader()
    reader.feed(command(args))
    expected = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    assert reader.reply() == expected
    assert reader.pending == 0


@pytest.mark.parametrize(
    "wire",
    [b"?what\r\n", b"$3\r\nabcd\r\n", b":12x\r\n", b"*z\r\n"],
)
def test_bytes_that_are_not_resp2_are_a_protocol_error(wire: bytes) -> None:
    reader = Reader()
    reader.feed(wire)
    with pytest.raises(ProtocolError):
        reader.reply()
    assert issubclass(ProtocolError, ConnectionError)


def test_an_error_reply_is_a_value_with_its_code() -> None:
    reader = Reader()
    reader.feed(b"*2\r\n-NOSCRIPT No matching script\r\n:1\r\n")
    error, one = reader.reply()
    assert isinstance(error, ReplyError)
    assert (error.code, str(error)) == ("NOSCRIPT", "NOSCRIPT No matching script")
    assert one == 1


# -- the client on a real server, every backend --------------------------------

ECHO = "return {ARGV[1], tonumber(ARGV[2]) + 1, #KEYS}"


def _ns() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.mark.anyio
async def test_concurrent_requests_never_mix_replies(redis_url: str) -> None:
    client = ScriptClient(redis_url, 5.0)
    got: dict[int, Any] = {}

    async def one(i: int) -> None:
        for _ in range(5):
            got[i] = await client.script(ECHO, ["{x}:a", "{x}:b"], [f"task-{i}", i])

    try:
        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(one, i)
        assert 1 <= len(client._idle) <= MAX_IDLE < 40
    finally:
        client.close()
    assert got == {i: [f"task-{i}".encode(), i + 1, 2] for i in range(40)}
    assert client._idle == []


@pytest.mark.anyio
async def test_a_script_flushed_from_the_server_is_sent_again(redis_url: str) -> None:
    @plait.tool(concurrency_limit=2)
    async def step(i: int) -> int:
        return i

    sync = redis.Redis.from_url(redis_url)
    limits = RedisLimits(redis_url, namespace=_ns())
    try:
        engine = Engine(tools=[step], shared_limits=limits)
        work = MapReduce(Var("xs"), Call("step", Var("item")), max_concurrency=2)
        assert await engine.run(work, {"xs": [1, 2, 3]}) == [1, 2, 3]
        evals = _calls(sync, "eval")
        await anyio.to_thread.run_sync(sync.script_flush)
        assert await engine.run(work, {"xs": [4, 5, 6]}) == [4, 5, 6]
        # The first admission after the flush sent the script itself, once;
        # the ones after ran it by its hash again.
        assert _calls(sync, "eval") == evals + 1
        assert await engine.run(work, {"xs": [7]}) == [7]
        assert _calls(sync, "eval") == evals + 1
    finally:
        limits.close()
        sync.close()


def _calls(client: Any, command: str) -> int:
    stats = client.info("commandstats").get(f"cmdstat_{command}", {})
    return int(stats.get("calls", 0))


@pytest.mark.anyio
async def test_a_script_error_is_not_a_missing_server(redis_url: str) -> None:
    limits = RedisLimits(redis_url, namespace=_ns())
    conn = limits._process().conn
    try:
        with pytest.raises(redis.exceptions.ResponseError, match="boom"):
            await conn.script("return redis.error_reply('boom')", [], [])
    finally:
        limits.close()


@pytest.mark.anyio
async def test_a_pooled_connection_dead_after_a_restart_is_replaced() -> None:
    from _servers import restartable_redis_server

    with restartable_redis_server() as (url, restart):
        client = ScriptClient(url, 2.0)
        try:
            assert await client.script(ECHO, [], ["a", 1]) == [b"a", 2, 0]
            await anyio.to_thread.run_sync(restart)
            assert await client.script(ECHO, [], ["b", 2]) == [b"b", 3, 0]
        finally:
            client.close()


@pytest.mark.anyio
async def test_password_and_database_from_the_url() -> None:
    from _servers import redis_server

    with redis_server() as url:
        admin = redis.Redis.from_url(url)
        admin.config_set("requirepass", "s3cret")
        host_port = url.split("//", 1)[1].rsplit("/", 1)[0]
        client = ScriptClient(f"redis://:s3cret@{host_port}/3", 2.0)
        wrong = RedisLimits(f"redis://:nope@{host_port}/0", namespace=_ns())
        try:
            await client.script("redis.call('SET', KEYS[1], 'here')", ["{x}:k"], [])
            db3 = redis.Redis.from_url(f"redis://:s3cret@{host_port}/3")
            assert db3.get("{x}:k") == b"here"
            db3.close()
            with pytest.raises(plait.LimitBackendUnavailable, match="refused"):
                await wrong._process().conn.script(ECHO, [], ["a", 1])
        finally:
            client.close()
            wrong.close()
            admin.close()


# -- servers that misbehave: plain anyio listeners ------------------------------


@contextlib.asynccontextmanager
async def fake_server(answer: bytes | None) -> AsyncIterator[tuple[str, list[str]]]:
    """A listener that reads requests and answers ``answer`` (None: never).

    Yields its URL and a log of how each connection ended.
    """
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    ended: list[str] = []

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                while True:
                    await stream.receive()
                    if answer is not None:
                        await stream.send(answer)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                ended.append("closed by the client")

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        try:
            yield f"redis://127.0.0.1:{port}/0", ended
        finally:
            tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_server_that_never_answers_times_out_and_is_hung_up_on() -> None:
    async with fake_server(None) as (url, ended):
        client = ScriptClient(url, 0.3)
        begun = anyio.current_time()
        with pytest.raises(TimeoutError):
            await client.script(ECHO, [], ["a", 1])
        assert 0.25 <= anyio.current_time() - begun < 5
        with anyio.fail_after(5):
            while not ended:
                await anyio.sleep(0.01)
        assert ended == ["closed by the client"]
        client.close()


@pytest.mark.anyio
async def test_a_request_is_not_cut_short_by_its_callers_cancel() -> None:
    # A reply that never reached its caller could be an admission nobody
    # releases: the request ends by its own timeout, not the caller's.
    async with fake_server(None) as (url, _):
        client = ScriptClient(url, 0.5)
        begun = anyio.current_time()
        with anyio.move_on_after(0.05), pytest.raises(TimeoutError):
            await client.script(ECHO, [], ["a", 1])
        assert anyio.current_time() - begun >= 0.4
        client.close()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "answer",
    [b"-LOADING Redis is loading the dataset in memory\r\n", b"HTTP/1.1 400\r\n"],
    ids=["loading", "not-redis"],
)
async def test_a_loading_or_foreign_server_is_unavailable(answer: bytes) -> None:
    @plait.tool(concurrency_limit=1)
    async def step() -> int:
        return 1

    async with fake_server(answer) as (url, _):
        limits = RedisLimits(url, namespace=_ns(), timeout=0.5)
        engine = Engine(tools=[step], shared_limits=limits)
        try:
            with pytest.raises(plait.StepFailed) as info:
                await engine.run(Call("step", retry=plait.Retry(attempts=1)))
        finally:
            limits.close()
    assert isinstance(info.value.error, plait.LimitBackendUnavailable)


@pytest.mark.anyio
async def test_a_refused_connection_is_unavailable_at_once() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    limits = RedisLimits(f"redis://127.0.0.1:{port}/0", namespace=_ns(), timeout=5.0)
    begun = anyio.current_time()
    try:
        with pytest.raises(plait.LimitBackendUnavailable, match="unavailable"):
            await limits._process().conn.script(ECHO, [], ["a", 1])
    finally:
        limits.close()
    assert anyio.current_time() - begun < 4


# -- one pool, many event loops ---------------------------------------------------


def test_one_limits_object_serves_loops_of_every_backend(redis_url: str) -> None:
    @plait.tool(concurrency_limit=3)
    async def step(i: int) -> int:
        return i * 2

    limits = RedisLimits(redis_url, namespace=_ns())
    work = MapReduce(Var("xs"), Call("step", Var("item")), max_concurrency=3)
    try:
        for backend in ("asyncio", "trio", "uvloop", "asyncio"):
            got = plait.run(
                work,
                {"xs": [1, 2, 3]},
                backend=backend,
                tools=[step],
                shared_limits=limits,
            )
            assert got == [2, 4, 6]
        # The sockets outlive the loops that used them, and serve the next.
        native = limits._process().conn.native
        assert native is not None
        assert 1 <= len(native._idle) <= MAX_IDLE
    finally:
        limits.close()


def test_rediss_urls_take_the_redis_py_road() -> None:
    assert not ScriptClient.supports("rediss://example.com:6380/0")
    limits = RedisLimits("rediss://127.0.0.1:1/0", namespace=_ns())
    try:
        conn = limits._process().conn
        assert (conn.road, conn.native) == ("threads", None)
    finally:
        limits.close()


@pytest.mark.anyio
async def test_a_unix_socket_url(tmp_path: Any) -> None:
    import shutil
    import subprocess

    exe = shutil.which("redis-server")
    if exe is None:
        from _servers import missing

        missing("redis-server")
    path = str(tmp_path / "redis.sock")
    argv = [exe, "--port", "0", "--unixsocket", path, "--dir", str(tmp_path)]
    argv += ["--save", "", "--appendonly", "no"]
    server = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    @plait.tool(concurrency_limit=1)
    async def step(i: int) -> int:
        return i

    limits = RedisLimits(f"unix://{path}?db=2", namespace=_ns())
    try:
        with anyio.fail_after(30):
            while not (tmp_path / "redis.sock").exists():
                await anyio.sleep(0.02)
        engine = Engine(tools=[step], shared_limits=limits)
        assert await engine.run(Call("step", 7)) == 7
        native = limits._process().conn.native
        assert native is not None
        assert len(native._idle) == 1
        db2 = redis.Redis(unix_socket_path=path, db=2)
        assert db2.exists(f"{{{limits.namespace}}}:declared")
        db2.close()
    finally:
        limits.close()
        server.terminate()
        server.wait(10)
