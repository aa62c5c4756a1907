"""Hints for set-ups that start fine and then fail every call: said at start, and in the error.

The usual one: zero-config (``--upstream URL``) without ``--upstream-key-env``. While no
gateway key exists (open mode) each caller's own ``Authorization`` is forwarded upstream;
after ``shadowtune keys create`` callers send gateway keys, which are never forwarded, so
the upstream gets no key at all and answers 401 to every call.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from gateway.config import Settings, UpstreamConfig

KEYS_CREATED = (
    "note: a gateway started with --upstream URL and no --upstream-key-env forwards callers' own keys "
    "only while no gateway key exists; from now on callers send gateway keys, so start it with "
    "--upstream-key-env VAR (the environment variable holding the provider key)"
)


def _where(url: str | None) -> str:
    return urlsplit(url or "").hostname or "the upstream"  # never the URL: it may hold credentials


def startup_warnings(settings: Settings, auth: Any) -> list[str]:
    """What to warn the operator about when the gateway starts."""
    warnings: list[str] = []
    srv = settings.server
    if srv.passthrough_url and not srv.upstream_key_env and not auth.open:
        warnings.append(
            f"zero-config without --upstream-key-env: callers authenticate with gateway keys, which are not "
            f"forwarded, so {_where(srv.passthrough_url)} gets no provider key and will answer 401; "
            "restart with --upstream-key-env VAR"
        )
    named = {name: up.api_key_env for name, up in settings.upstreams.items() if up.api_key_env}
    if srv.passthrough_url and srv.upstream_key_env:
        named["--upstream"] = srv.upstream_key_env
    for name, env in sorted(named.items()):
        if not os.environ.get(env):
            warnings.append(f"upstream {name!r}: the environment variable {env} (its key) is not set")
    return warnings


def missing_key_hint(upstream: UpstreamConfig | None, *, passthrough: bool, forwarded: bool) -> str | None:
    """The message for an upstream's 401 when the gateway sent it no key; None when one was sent."""
    if upstream is None or forwarded:
        return None
    env = upstream.api_key_env
    if env and os.environ.get(env):
        return None  # a key was sent and refused: the upstream's own message says why
    if passthrough:
        return (
            "the upstream answered 401: the gateway sent it no provider key. In zero-config mode callers' "
            "own keys are forwarded only while no gateway key exists; start the gateway with "
            "--upstream-key-env VAR (the environment variable holding the provider key)"
        )
    if env:
        return f"the upstream answered 401: the environment variable {env} (its key) is not set"
    return "the upstream answered 401: this upstream has no api_key_env in the configuration"
