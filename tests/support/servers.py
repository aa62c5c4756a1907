"""Real servers for tests: the gateway in-process (uvicorn in a thread, port 0), or as a
``shadowtune serve`` subprocess (for kill -9 and multi-worker tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import uvicorn

from gateway.agent.supervisor import AGENT_STOP_S, WORKER_STOP_S
from gateway.app import GatewayApp, create_app
from gateway.config import Settings
from gateway.server import uvicorn_options

STOP_GRACE_S = WORKER_STOP_S + AGENT_STOP_S + 5  # after SIGTERM, before SIGKILL


class GatewayServer:
    """``create_app(settings)`` served by uvicorn (uvloop, `gateway.server`'s protocol) in a thread on
    127.0.0.1:0 (``host``: another address to listen on, e.g. ``0.0.0.0`` to be reached from outside)."""

    def __init__(self, settings: Settings, *, host: str = "127.0.0.1", **app_kwargs: Any) -> None:
        self.app: GatewayApp = create_app(settings, **app_kwargs)
        self.ctx = self.app.ctx
        options = uvicorn_options(settings)  # the same protocol and limits as ``shadowtune serve``
        config = uvicorn.Config(self.app, host=host, port=0, log_level="warning", **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.port = 0

    def start(self) -> GatewayServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("gateway did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.ctx.port = self.port
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def flush(self) -> None:
        self.ctx.writer.flush()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)


def outside_address() -> str | None:
    """This machine's address on its default route (not loopback), or None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("203.0.113.1", 9))  # no packet is sent: this only picks the outgoing interface
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_responds(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not respond within {timeout}s")


class ServeProcess:
    """``shadowtune serve ...`` as a subprocess in its own process group."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.args = [sys.executable, "-m", "gateway", "serve", "--port", str(self.port), *args]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ServeProcess:
        self.proc = subprocess.Popen(
            self.args, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        wait_until_responds(self.url + "/healthz", timeout)
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:  # the supervisor's own grace: a gateway still flushing its log is not killed
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
