"""Every async test runs on asyncio, asyncio+uvloop and Trio."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

BACKENDS = [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    pytest.param(("trio", {}), id="trio"),
]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    return request.param  # type: ignore[no-any-return]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--slow", action="store_true", default=False, help="run the long soak tests"
    )


def pytest_configure(config: pytest.Config) -> None:
    # The differential tests (test_differential.py) read this profile: a
    # quick pass by default, a soak with --slow. The async ones use the
    # function-scoped anyio_backend fixture, which never changes within a
    # test, so that health check does not apply.
    settings.register_profile(
        "plait-differential",
        max_examples=500 if config.getoption("--slow") else 40,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis server on loopback for the whole session (see _servers.py)."""
    from _servers import redis_server

    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A real PostgreSQL server on loopback for the whole session."""
    from _servers import postgres_server

    with postgres_server() as dsn:
        yield dsn
