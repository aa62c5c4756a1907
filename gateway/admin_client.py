"""How every command finds the gateway and the state: one admin-API client, one set of options.

`find_target` resolves, the same way for ``routes``, ``keys``, ``controller`` and
``triggers``, highest priority first:

* the gateway's URL: ``--url``, ``SHADOWTUNE_URL``, the config's ``server.host``/``port``
  (``--config`` or ``SHADOWTUNE_CONFIG``; ``0.0.0.0`` means loopback), ``http://127.0.0.1:8000``;
* the admin token: ``--admin-token``, ``SHADOWTUNE_ADMIN_TOKEN``, the config's ``server.admin_token``;
* the state: ``--state``, the config's ``store.state_url`` (or ``state_dir``, or ``log_dir``);
  ``SHADOWTUNE_STORE__*`` variables apply as they do to the gateway;
* the call log: ``--log-dir`` when given, else the config's ``store.log_dir``.

`AdminClient` speaks the admin API (route and upstream names URL-quoted, so ``org/model``
works) and raises `AdminError` with the gateway's own message; it is the one client of the
gateway's HTTP API that commands, the trainer's deploy step and evals use.
`gateway.clikit.options.gateway_options` adds the options to a click command and passes it
``target``. Nothing here imports the server.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class Target:
    url: str
    """The gateway's base URL (no ``/v1``)."""
    token: str | None
    state: str
    """The state backend's location (`gateway.state.open_backend`)."""
    log_dir: str


class TargetError(ValueError):
    """The configuration that should say where the gateway is cannot be read."""


def find_target(
    config_path: str | None = None,
    *,
    url: str | None = None,
    token: str | None = None,
    state: str | None = None,
    log_dir: str | None = None,
) -> Target:
    from pydantic import ValidationError

    from gateway.config import Settings
    from gateway.state import location_of

    try:
        settings = Settings.load(config_path, store__log_dir=log_dir)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise TargetError(f"invalid configuration: {where}: {first['msg']}") from None
    except (OSError, ValueError) as exc:
        raise TargetError(f"cannot read the configuration: {exc}") from None
    server = settings.server
    if not url:
        url = os.environ.get("SHADOWTUNE_URL")
    if not url and (config_path or os.environ.get("SHADOWTUNE_CONFIG")):
        host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
        url = f"http://{'[' + host + ']' if ':' in host else host}:{server.port}"
    if not token:
        token = os.environ.get("SHADOWTUNE_ADMIN_TOKEN") or (
            server.admin_token.get_secret_value() if server.admin_token else None
        )
    return Target(
        url=(url or DEFAULT_URL).rstrip("/").removesuffix("/v1"),
        token=token or None,
        state=state or location_of(settings),
        log_dir=settings.store.log_dir,
    )


class AdminError(Exception):
    """The admin API refused (with its message) or could not be reached (status 0)."""

    def __init__(self, message: str, status: int = 0, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


def route_path(route: str, suffix: str = "") -> str:
    return "/admin/routes/" + urllib.parse.quote(route, safe="") + suffix


def upstream_path(name: str) -> str:
    return "/admin/upstreams/" + urllib.parse.quote(name, safe="")


class AdminClient:
    """The gateway's admin API over HTTP: base URL plus bearer token."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/").removesuffix("/v1")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    @classmethod
    def for_target(cls, target: Target, **kwargs: Any) -> AdminClient:
        return cls(target.url, target.token, **kwargs)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            resp = self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise AdminError(f"cannot reach the gateway at {self.url}: {exc}") from exc
        try:
            data = resp.json()
        except ValueError:
            data = None
        if resp.status_code >= 400:
            err = (data or {}).get("error") if isinstance(data, dict) else None
            err = err if isinstance(err, dict) else {}
            message = err.get("message") or resp.text[:200]
            param = f" ({err['param']})" if err.get("param") else ""
            raise AdminError(
                f"{method} {path}: HTTP {resp.status_code}: {message}{param}",
                resp.status_code,
                err.get("code"),
            )
        if not isinstance(data, dict):
            raise AdminError(f"{method} {path}: expected a JSON object from the gateway", resp.status_code)
        return data

    # -- routes ------------------------------------------------------------------------------
    def routes(self) -> dict[str, Any]:
        return self.request("GET", "/admin/routes")

    def get_route(self, route: str) -> dict[str, Any]:
        return self.request("GET", route_path(route))

    def set_route(self, route: str, changes: dict[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", route_path(route), changes)

    def history(self, route: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        path = route_path(route, "/history") if route is not None else "/admin/history"
        rows = self.request("GET", f"{path}?limit={int(limit)}").get("data")
        if not isinstance(rows, list):
            raise AdminError(f"GET {path}: the gateway answered no history list")
        return rows

    # -- upstreams ---------------------------------------------------------------------------
    def upstreams(self) -> list[dict[str, Any]]:
        rows = self.request("GET", "/admin/upstreams").get("data")
        if not isinstance(rows, list):
            raise AdminError("GET /admin/upstreams: the gateway answered no upstream list")
        return [u for u in rows if isinstance(u, dict)]

    def put_upstream(self, name: str, config: dict[str, Any]) -> dict[str, Any]:
        return self.request("PUT", upstream_path(name), config)

    # -- the public API (a client built with a client key) ----------------------------------
    def post_feedback(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /v1/feedback``: the client's token is a client API key here."""
        return self.request("POST", "/v1/feedback", body)

    # -- keys --------------------------------------------------------------------------------
    def create_key(self, name: str) -> str:
        return str(self.request("POST", "/admin/keys", {"name": name})["key"])

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def __getattr__(name: str) -> Any:  # the options moved to gateway.clikit.options
    if name == "target_options":
        from gateway.clikit.options import gateway_options

        return gateway_options
    raise AttributeError(name)
