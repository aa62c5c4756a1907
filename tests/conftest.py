"""Shared fixtures: a fake upstream provider (a real HTTP server), settings over tmp_path,
and the gateway served in-process on a free port."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Settings
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import GatewayServer


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--clock",
        default=os.environ.get("SHADOWTUNE_TEST_CLOCK"),
        help="start every test at this UTC instant (ISO 8601; the clock runs on): tests/clock_shift.sh",
    )


@pytest.fixture(autouse=True)
def _shifted_clock(request: pytest.FixtureRequest) -> Iterator[None]:
    """With ``--clock``, every test starts at that instant (time-machine; monotonic clocks are real).

    It shifts this process only: code under test in subprocesses (``serve``, workers) keeps the
    real clock, so the e2e tests are left out of the shifted runs.
    """
    instant = request.config.getoption("--clock")
    if not instant:
        yield
        return
    import datetime as dt

    import time_machine

    start = dt.datetime.fromisoformat(instant)
    with time_machine.travel(start if start.tzinfo else start.replace(tzinfo=dt.UTC), tick=True):
        yield


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("SHADOWTUNE_CONFIG", "SHADOWTUNE_LOG_DIR", "SHADOWTUNE_ADMIN_TOKEN", "SHADOWTUNE_URL"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream().start()
    yield up
    up.stop()


@pytest.fixture
def log_dir(tmp_path: Path) -> str:
    return str(tmp_path / "log")


@pytest.fixture
def make_settings(log_dir: str, fake_upstream: FakeUpstream) -> Callable[..., Settings]:
    """Settings with the fake upstream as passthrough (any model name) unless routes are given.

    ``make_settings(routes={...}, upstreams={...}, server={...})``; upstream entries without
    ``base_url`` get the fake upstream's.
    """

    def make(**sections: Any) -> Settings:
        data: dict[str, Any] = {
            "server": {"auth": "open", "passthrough_url": fake_upstream.base_url},
            "store": {"log_dir": log_dir, "flush_interval": 0.2},
        }
        for key, value in sections.items():
            if key == "upstreams":
                value = {n: {"base_url": fake_upstream.base_url, **u} for n, u in value.items()}
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return Settings.model_validate(data)

    return make


@pytest.fixture
def start_gateway() -> Iterator[Callable[..., GatewayServer]]:
    servers: list[GatewayServer] = []

    def start(settings: Settings, **app_kwargs: Any) -> GatewayServer:
        gw = GatewayServer(settings, **app_kwargs).start()
        servers.append(gw)
        return gw

    yield start
    for gw in servers:
        gw.stop()


@pytest.fixture
def gateway(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., GatewayServer]
) -> GatewayServer:
    """The gateway in passthrough (zero-config) mode in front of the fake upstream."""
    return start_gateway(make_settings())


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """One throwaway PostgreSQL cluster for the session (tests take a database each: `postgres_url`)."""
    from tests.support.postgres import PostgresServer

    server = PostgresServer().start()
    yield server
    server.destroy()


@pytest.fixture
def postgres_url(postgres_server: Any) -> str:
    return str(postgres_server.new_database())


@pytest.fixture(params=["files", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A state backend's location, once per backend: a directory, then a PostgreSQL database."""
    if request.param == "files":
        return str(tmp_path / "state")
    return str(request.getfixturevalue("postgres_url"))
