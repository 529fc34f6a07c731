"""The HTTP tool: requests on httpx, with 429s turned into backpressure.

One pooled ``httpx.AsyncClient`` serves all the calls of a tool in one run
(kept in the run's resources, see :mod:`plait._runtime._resources`), sized
to the tool's concurrency limit and closed when the run ends; httpx runs on
asyncio, uvloop and Trio alike. A response tells the engine how the service
is doing:

* 429 and 503 raise :class:`plait.RateLimited` with the ``Retry-After``
  header read (seconds or an HTTP date), so the tool's calls pause and an
  :class:`plait.Adaptive` limit shrinks;
* other 5xx raise :class:`HttpServerError` (retried by the default
  :class:`plait.Retry`), other 4xx :class:`HttpError` (not retried);
* a timeout becomes ``TimeoutError`` and a failed connection
  ``ConnectionError``, both retried by default.

httpx is imported on first use, so ``import plait`` does not need it.
"""

from __future__ import annotations

import functools
import json as jsonlib
import ssl
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from .._model._backpressure import Adaptive
from .._model._errors import HttpError, HttpServerError, RateLimited
from .._model._ratelimit import RateLimit
from .._model._retry import Retry
from .._model._tools import Tool
from .._runtime._resources import current_resources
from ._variant import make_tool

if TYPE_CHECKING:
    import httpx

__all__ = [
    "DEFAULT_HTTP_CONCURRENCY",
    "HttpResponse",
    "http",
    "http_tool",
]

DEFAULT_HTTP_CONCURRENCY = Adaptive(initial=8, min=1, max=64)
"""Requests of one HTTP tool in flight at once per engine, by default."""

DEFAULT_TIMEOUT = 30.0
"""Seconds for each of connecting, sending and reading, by default."""

_PUSH_BACK = frozenset({429, 503})
_POOL_WITHOUT_LIMIT = 100  # httpx's own default


@attrs.frozen
class HttpResponse:
    """What a request got back.

    Attributes:
        status: the status code (2xx or 3xx: error statuses raise).
        headers: the response headers, names in lower case (a header sent
            several times has its values joined by ``", "``).
        text: the body, decoded as text.
        json: the body decoded as JSON when the response says it is JSON
            (and it decodes), else None.
    """

    status: int
    headers: dict[str, str]
    text: str
    json: Any = None


def _httpx() -> Any:
    try:
        import httpx
    except ImportError:  # pragma: no cover - the extra is installed in tests
        raise ImportError(
            'the HTTP tool needs httpx: pip install "plait[http]"'
        ) from None
    return httpx


@functools.cache
def _tls() -> ssl.SSLContext:
    """The TLS settings every client shares, made once per process.

    Loading the certificate store takes tens of milliseconds: once, not
    once per run's client.
    """
    context: ssl.SSLContext = _httpx().create_ssl_context()
    return context


def _text(response: httpx.Response, content_type: str | None = None) -> str:
    """The body as text, in the charset its content type names (else UTF-8).

    What ``response.text`` gives, for a fraction of its cost on the small
    bodies APIs send (it parses the header with :mod:`email` and decodes
    incrementally). ``content_type``: the header, when already read.
    """
    if content_type is None:
        content_type = response.headers.get("content-type", "")
    _, found, rest = content_type.lower().partition("charset=")
    charset = rest.split(";", 1)[0].strip(" \"'") if found else "utf-8"
    try:
        return response.content.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return response.text


def _headers(response: httpx.Response) -> dict[str, str]:
    """The headers as a dict, names in lower case, repeated ones joined.

    What ``dict(response.headers.items())`` gives, in one pass over the raw
    headers with their encoding looked up once (``items()`` looks it up
    twice per header).
    """
    headers = response.headers
    encoding = headers.encoding
    found: dict[str, str] = {}
    for raw_name, raw_value in headers.raw:
        name = raw_name.decode(encoding).lower()
        value = raw_value.decode(encoding)
        found[name] = f"{found[name]}, {value}" if name in found else value
    return found


def _decoded(response: httpx.Response, content_type: str) -> Any:
    if "json" not in content_type:
        return None
    try:
        return jsonlib.loads(response.content)
    except ValueError:
        return None


def _response(method: str, url: str, response: httpx.Response) -> HttpResponse:
    """The :class:`HttpResponse` of a success; raise for an error status.

    See the module docstring for which error each status raises.
    """
    headers = _headers(response)
    status = response.status_code
    if status >= 400:
        if status in _PUSH_BACK:
            raise RateLimited(
                f"{method} {url} returned {status}",
                retry_after=headers.get("retry-after"),
            )
        error = HttpServerError if status >= 500 else HttpError
        raise error(status, method, url, response.text)
    content_type = headers.get("content-type", "")
    return HttpResponse(
        status,
        headers,
        _text(response, content_type),
        _decoded(response, content_type),
    )


def _translated(method: str, url: str, error: Exception) -> Exception | None:
    """The builtin error a failed request raises, or None to let it through."""
    hx = _httpx()
    if isinstance(error, hx.TimeoutException):
        return TimeoutError(f"{method} {url} timed out: {error}")
    if isinstance(error, hx.TransportError):
        return ConnectionError(f"{method} {url} failed: {error!r}")
    return None


class HttpClient:
    """The function of an HTTP tool: its defaults and how it gets a client.

    Call it as ``await client(method, url, ...)``, see :meth:`__call__`.
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        headers: Mapping[str, str] | None = None,
        pool: int = _POOL_WITHOUT_LIMIT,
    ) -> None:
        self.base_url = base_url
        self.headers = dict(headers or {})
        self.pool = pool

    def __repr__(self) -> str:
        return f"<HttpClient base_url={self.base_url!r} pool={self.pool}>"

    def new_client(self) -> httpx.AsyncClient:
        """A pooled client with this tool's base URL, headers and pool size."""
        hx = _httpx()
        limits = hx.Limits(
            max_connections=self.pool, max_keepalive_connections=self.pool
        )
        client: httpx.AsyncClient = hx.AsyncClient(
            base_url=self.base_url or "",
            headers=self.headers,
            limits=limits,
            verify=_tls(),
            timeout=DEFAULT_TIMEOUT,
        )
        return client

    async def __call__(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        content: str | bytes | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - httpx's, per request
    ) -> HttpResponse:
        """Send one request and return its :class:`HttpResponse`.

        Args:
            method: ``"GET"``, ``"POST"``, ...
            url: absolute, or relative to the tool's ``base_url``.
            params: query parameters.
            headers: headers, on top of the tool's own.
            json: a body sent as JSON.
            content: a body sent as it is.
            timeout: seconds for each of connecting, sending and reading
                (None: no timeout).

        Raises:
            RateLimited: a 429 or 503, with the ``Retry-After`` it gave.
            HttpServerError: another 5xx.
            HttpError: another 4xx.
            TimeoutError: the request timed out.
            ConnectionError: the connection failed or broke.
        """
        resources = current_resources()
        try:
            if resources is None:  # outside a run: a client for this call
                async with self.new_client() as client:
                    response = await _send(
                        client, method, url, params, headers, json, content, timeout
                    )
            else:
                client = resources.get(self, self._shared)
                response = await _send(
                    client, method, url, params, headers, json, content, timeout
                )
        except Exception as e:
            error = _translated(method, url, e)
            if error is None:
                raise
            raise error from e
        return _response(method, url, response)

    def _shared(self) -> tuple[httpx.AsyncClient, Any]:
        client = self.new_client()
        return client, client.aclose


def _send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    params: Mapping[str, Any] | None,
    headers: Mapping[str, str] | None,
    json: Any,
    content: str | bytes | None,
    timeout: float | None,
) -> Awaitable[httpx.Response]:
    """Send the request, passing httpx only the options the call gave.

    A plain request (the usual GET) leaves httpx's defaults alone: a
    ``timeout`` it would turn into a ``Timeout`` per request is the
    client's own (``DEFAULT_TIMEOUT``) already.
    """
    if (
        params is None
        and headers is None
        and json is None
        and content is None
        and timeout == DEFAULT_TIMEOUT
    ):
        return client.request(method, url)
    return client.request(
        method,
        url,
        params=params,
        headers=headers,
        json=json,
        content=content,
        timeout=timeout,
    )


def _pool(limit: int | Adaptive | None) -> int:
    if isinstance(limit, Adaptive):
        return limit.max
    return _POOL_WITHOUT_LIMIT if limit is None else limit


def http_tool(
    name: str = "http",
    *,
    concurrency_limit: int | Adaptive | None = DEFAULT_HTTP_CONCURRENCY,
    timeout: float | None = None,
    retry: Retry | None = Retry(),  # noqa: B008 - a frozen value
    rate_limit: RateLimit | None = None,
    base_url: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Tool:
    """Make an HTTP tool with its own name, limits and defaults.

    ``plait.tools.http`` is ``http_tool()``. Make one per service, so that
    each gets its own limit, cool-down and pool::

        search = plait.tools.http_tool(
            "search",
            base_url="https://api.example.com",
            headers={"authorization": "Bearer ..."},
            concurrency_limit=plait.Adaptive(initial=4, max=16),
            rate_limit=plait.RateLimit(10),
        )

    Args:
        name: the name workflows call it by.
        concurrency_limit: requests in flight at once per engine: an int, a
            :class:`plait.Adaptive` (the default: from 8, between 1 and
            64), or None (only the engine's ``max_concurrency``). The
            connection pool is sized to it (to ``max`` when adaptive).
        timeout: seconds per attempt, on top of the request's own
            ``timeout``.
        retry: a :class:`plait.Retry`; by default three attempts for 429,
            503, other 5xx, timeouts and connection errors.
        rate_limit: a :class:`plait.RateLimit` for the tool, per engine.
        base_url: prefixed to relative URLs.
        headers: sent with every request (a call's own come on top).

    Raises:
        ConfigError: a bad limit, timeout or policy.
    """
    fn = HttpClient(base_url=base_url, headers=headers, pool=_pool(concurrency_limit))
    return make_tool(
        "http_tool",
        fn,
        name,
        concurrency_limit=concurrency_limit,
        timeout=timeout,
        retry=retry,
        rate_limit=rate_limit,
    )


http = http_tool()
# So that plait.dump writes the tool as "plait.tools:http".
http.fn.__module__, http.fn.__qualname__ = "plait.tools", "http"
"""The ready-made HTTP tool, named ``"http"``: an adaptive limit (from 8
requests at once, between 1 and 64), three attempts for 429s, 5xx, timeouts
and connection errors. ``plait.Engine(tools=[plait.tools.http])``, then
``Call("http", "GET", "https://...")``.
"""
