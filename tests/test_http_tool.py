"""plait.tools.http against a real HTTP server on loopback that enforces a quota."""

from __future__ import annotations

import email.utils
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import plait
from _quota_server import QuotaServer, naive_requests, quota_server
from plait.tools import HttpError, HttpResponse, HttpServerError, http, http_tool
from plait.tools._http import HttpClient

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def server() -> Iterator[QuotaServer]:
    with quota_server(rate=100, burst=10, max_in_flight=8, latency=0.05) as s:
        yield s


def test_importing_plait_does_not_import_httpx() -> None:
    import subprocess

    code = "import plait, plait.tools, sys; print('httpx' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


async def test_a_get_returns_an_http_response(server: QuotaServer) -> None:
    engine = plait.Engine(tools=[http])
    got = await engine.run(
        plait.Call("http", method="GET", url=f"{server.url}/q/1", params={"a": "b"})
    )
    assert isinstance(got, HttpResponse)
    assert got.status == 200
    assert got.json == {"path": "/q/1?a=b"}
    assert got.headers["content-type"] == "application/json"


async def test_a_post_sends_json_and_headers(server: QuotaServer) -> None:
    echo = http_tool("echo", base_url=server.url, headers={"x-team": "a"})
    got = await plait.Engine(tools=[echo]).run(
        plait.Call("echo", "POST", "/echo", json={"n": [1, 2]}, headers={"x-b": "c"})
    )
    assert got.json == {"n": [1, 2]}
    raw = await plait.Engine(tools=[echo]).run(
        plait.Call("echo", "POST", "/echo", content=b"not json")
    )
    assert (raw.text, raw.json) == ("not json", None)


async def test_a_4xx_fails_at_once_a_5xx_is_retried(server: QuotaServer) -> None:
    engine = plait.Engine(
        tools=[http_tool(retry=plait.Retry(attempts=3, initial_delay=0))]
    )
    result = await engine.execute(
        plait.Parallel(
            plait.Call("http", "GET", f"{server.url}/fail/404"),
            plait.Call("http", "GET", f"{server.url}/fail/500"),
            on_error="collect",
        )
    )
    missing, broken = result.output
    assert isinstance(missing.error, HttpError)
    assert not isinstance(missing.error, HttpServerError)
    assert (missing.error.status, missing.error.body) == (404, "it failed")
    assert isinstance(broken.error, HttpServerError)
    assert isinstance(broken.error, ConnectionError)  # transient
    assert broken.error.status == 500
    assert result.stats.tools["http"].retries == 2  # the 500's, not the 404's


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("2", 2.0), ("0.25", 0.25), ("date", 30.0), ("soon", None), ("-3", None)],
)
async def test_429_raises_rate_limited_with_retry_after(
    server: QuotaServer, header: str, seconds: float | None
) -> None:
    if header == "date":
        header = email.utils.formatdate(time.time() + 30, usegmt=True)
    with pytest.raises(plait.RateLimited) as info:
        await http("GET", f"{server.url}/retry-after/{header}")
    if seconds is None:
        assert info.value.retry_after is None
        assert info.value.retry_after_ignored
    else:
        assert info.value.retry_after == pytest.approx(seconds, abs=1)


async def test_503_is_a_push_back_too(server: QuotaServer) -> None:
    with pytest.raises(plait.RateLimited, match="503"):
        await http("GET", f"{server.url}/fail/503")


async def test_a_refused_connection_is_a_connection_error() -> None:
    with anyio.fail_after(10):
        with pytest.raises(ConnectionError):
            await http("GET", "http://127.0.0.1:9/", timeout=2)


async def test_one_pooled_client_per_run_closed_when_it_ends(
    server: QuotaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Any] = []
    new_client = HttpClient.new_client

    def recording(self: HttpClient) -> Any:
        client = new_client(self)
        made.append(client)
        return client

    monkeypatch.setattr(HttpClient, "new_client", recording)
    engine = plait.Engine(tools=[http])
    urls = [f"{server.url}/fail/200" for _ in range(20)]
    for _ in range(2):
        out = await engine.run(
            plait.MapReduce(over=urls, map=plait.Call("http", "GET", plait.Var("item")))
        )
        assert [r.status for r in out] == [200] * 20
    assert len(made) == 2  # one per run
    assert all(client.is_closed for client in made)


async def test_a_document_calls_it_by_import_path(server: QuotaServer) -> None:
    workflow = plait.load(
        f"""
        inputs: [n]
        kind: map_reduce
        over: {{fn: builtins:range, args: [{{var: n}}]}}
        map:
          kind: call
          tool: plait.tools:http
          args: {{method: GET, url: "{server.url}/fail/200"}}
        """
    )
    out = await plait.Engine().run(workflow, {"n": 3})
    assert [r.status for r in out] == [200, 200, 200]


# -- the quota: adaptive concurrency against the naive way --------------------------

REQUESTS = 600
WIDTH = 64


async def test_adaptive_http_keeps_429s_rare_and_throughput_high(
    server: QuotaServer, anyio_backend: tuple[str, dict[str, Any]]
) -> None:
    tool = http_tool(
        concurrency_limit=plait.Adaptive(initial=8, min=1, max=64),
        retry=plait.Retry(attempts=20, initial_delay=0.01, max_delay=0.5),
    )
    engine = plait.Engine(tools=[tool], max_concurrency=WIDTH)
    errors: list[BaseException | None] = []
    engine.subscribe(lambda e: errors.append(e.error), ["call.retried"])
    urls = [f"{server.url}/q/{i}" for i in range(REQUESTS)]
    server.reset()
    with anyio.fail_after(60):
        result = await engine.execute(
            plait.MapReduce(
                over=urls,
                map=plait.Call("http", "GET", plait.Var("item")),
                max_concurrency=WIDTH,
            )
        )
    seen = server.seen
    assert [r.status for r in result.output] == [200] * REQUESTS
    others = [e for e in errors if not isinstance(e, plait.RateLimited)]
    assert not others
    assert seen.ok == REQUESTS
    assert seen.share_429 <= 0.10, seen
    assert seen.throughput() >= 0.70 * server.rate, seen
    stats = result.stats.tools["http"]
    assert stats.pushed_back == seen.too_many
    assert stats.limit is not None
    assert 1 <= stats.limit <= 64
    line = (
        f"plait Adaptive ({anyio_backend}): {seen.share_429:.1%} 429s, "
        f"{seen.throughput() / server.rate:.0%} of quota"
    )
    if anyio_backend == ("asyncio", {}):  # the comparison, once
        server.reset()
        with anyio.fail_after(120):
            await naive_requests(urls, WIDTH)
        naive = server.seen
        assert naive.ok == REQUESTS
        line += (
            f"; naive 64-wide retry loop: {naive.share_429:.1%} 429s, "
            f"{naive.throughput() / server.rate:.0%} of quota"
        )
    print(line)


@pytest.mark.parametrize(
    ("content_type", "body", "text"),
    [
        ("application/json", "é".encode(), "é"),
        ("text/plain; charset=latin-1", "é".encode("latin-1"), "é"),
        ('text/plain; charset="UTF-8"; format=flowed', "é".encode(), "é"),
        ("text/plain; charset=no-such-charset", b"abc", "abc"),
        ("text/plain", b"\xff", "\ufffd"),
    ],
)
def test_the_body_is_decoded_in_its_charset(
    content_type: str, body: bytes, text: str
) -> None:
    import httpx

    from plait.tools._http import _text

    response = httpx.Response(200, headers={"content-type": content_type}, content=body)
    assert _text(response) == text


@pytest.mark.parametrize(
    "raw",
    [
        [(b"Content-Type", b"application/json"), (b"content-length", b"2")],
        [(b"Set-Cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"X-A", b"1")],
        [(b"x-name", "é".encode())],
        [(b"x-name", "é".encode("latin-1"))],
        [],
    ],
)
def test_the_headers_are_httpx_own_joined_and_in_lower_case(
    raw: list[tuple[bytes, bytes]],
) -> None:
    import httpx

    from plait.tools._http import _headers

    response = httpx.Response(200, headers=raw, content=b"{}")
    assert _headers(response) == dict(response.headers.items())
