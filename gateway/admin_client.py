"""How every command finds the gateway and the state: one admin-API client, one set of options.

`find_target` resolves, the same way for ``routes``, ``keys``, ``controller`` and
``triggers``, highest priority first:

* the gateway's URL: ``--url``, ``SHADOWTUNE_URL``, the config's ``server.host``/``port``
  (``--config`` or ``SHADOWTUNE_CONFIG``; ``0.0.0.0`` means loopback), ``http://127.0.0.1:8000``;
* the admin token: ``--admin-token``, ``SHADOWTUNE_ADMIN_TOKEN``, the config's ``server.admin_token``;
* the state: ``--state``, the config's ``store.state_url`` (or ``state_dir``, or ``log_dir``);
  ``SHADOWTUNE_STORE__*`` variables apply as they do to the gateway;
* the call log: ``--log-dir`` when given, else the config's ``store.log_dir``.

`AdminClient` speaks the admin API (route names URL-quoted, so ``org/model`` works) and
raises `AdminError` with the gateway's own message. `target_options` adds the options to a
click command and passes it ``target``. Nothing here imports the server.
"""

from __future__ import annotations

import functools
import os
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click
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


def target_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--config``, ``--url``, ``--admin-token`` and ``--state``; the command gets ``target``.

    A command's own ``--log-dir`` keeps working: given explicitly it wins, else the config's."""

    @functools.wraps(f)
    def wrapper(**kwargs: Any) -> Any:
        ctx = click.get_current_context()
        config_path = kwargs.pop("config_path")
        has_config = bool(config_path or os.environ.get("SHADOWTUNE_CONFIG"))
        given = kwargs.get("log_dir")
        explicit = "log_dir" in kwargs and ctx.get_parameter_source("log_dir") not in (
            click.core.ParameterSource.DEFAULT,
            click.core.ParameterSource.DEFAULT_MAP,
        )
        try:
            target = find_target(
                config_path,
                url=kwargs.pop("url"),
                token=kwargs.pop("admin_token"),
                state=kwargs.pop("state_url"),
                log_dir=given if explicit or (given and not has_config) else None,
            )
        except TargetError as exc:
            raise click.ClickException(str(exc)) from None
        if "log_dir" in kwargs:
            kwargs["log_dir"] = target.log_dir
        return f(target=target, **kwargs)

    options = [
        click.option(
            "-c",
            "--config",
            "config_path",
            type=click.Path(exists=True, dir_okay=False),
            help="The gateway's config file: its URL, admin token, state and log (default $SHADOWTUNE_CONFIG).",
        ),
        click.option(
            "--url", help=f"Running gateway (default $SHADOWTUNE_URL, else --config's, else {DEFAULT_URL})."
        ),
        click.option(
            "--admin-token",
            help="Admin token (default $SHADOWTUNE_ADMIN_TOKEN, else --config's server.admin_token).",
        ),
        click.option(
            "--state",
            "state_url",
            help="State backend: a directory or postgresql:// URL (default: --config's store.state_url, "
            "else the log directory).",
        ),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


class AdminError(Exception):
    """The admin API refused (with its message) or could not be reached (status 0)."""

    def __init__(self, message: str, status: int = 0, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


def route_path(route: str, suffix: str = "") -> str:
    return "/admin/routes/" + urllib.parse.quote(route, safe="") + suffix


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

    # -- keys --------------------------------------------------------------------------------
    def create_key(self, name: str) -> str:
        return str(self.request("POST", "/admin/keys", {"name": name})["key"])

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
