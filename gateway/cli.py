"""The ``shadowtune`` command.

The gateway's own commands live here and in `gateway.cli_ops` (``logs``, ``routes``,
``feedback``); the trainer's and evals' groups are registered by the packages
themselves under the ``shadowtune.commands`` entry-point group and loaded only when
named, so ``shadowtune serve`` never imports torch.
"""

from __future__ import annotations

import json
import os
import sys
from importlib.metadata import entry_points
from typing import Any

import click

from gateway import __version__
from gateway.store.layout import DEFAULT_LOG_DIR, default_log_dir


class _Root(click.Group):
    """Root group that adds plugin groups lazily (trainer, evals)."""

    def _plugins(self) -> dict[str, Any]:
        return {ep.name: ep for ep in entry_points(group="shadowtune.commands")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is not None:
            return cmd
        ep = self._plugins().get(name)
        if ep is None:
            return None
        try:
            loaded: click.Command = ep.load()
        except ImportError as exc:
            message = (
                f"'{name}' needs an optional part of Shadowtune that is not installed ({exc}); "
                "try: pip install 'shadowtune[train,evals]'"
            )

            def unavailable() -> None:
                raise click.ClickException(message)

            return click.Command(name, callback=unavailable, short_help="(not installed)", help=message)
        return loaded


@click.group(cls=_Root)
@click.version_option(__version__, prog_name="shadowtune")
def main() -> None:
    """Shadowtune: replace a prompted LLM with a fine-tuned one, safely and measurably."""


# -- serve ---------------------------------------------------------------------------------
@main.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="YAML or TOML config file.",
)
@click.option("--upstream", help="Zero-config: forward every model name to this OpenAI-compatible base URL.")
@click.option("--upstream-key-env", help="Environment variable holding the key for --upstream.")
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default 8000).")
@click.option("--workers", type=int, help="Worker processes (default 1).")
@click.option("--log-dir", help=f"Call log directory or s3:// URI (default {DEFAULT_LOG_DIR}).")
@click.option("--open", "open_mode", is_flag=True, default=None, help="No client authentication (local use).")
@click.option(
    "--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"])
)
def serve(
    config_path: str | None,
    upstream: str | None,
    upstream_key_env: str | None,
    host: str | None,
    port: int | None,
    workers: int | None,
    log_dir: str | None,
    open_mode: bool | None,
    log_level: str,
) -> None:
    """Start the gateway (OpenAI-compatible, with its call log).

    Runs the request workers and one log agent for the host, under a supervisor
    (`gateway.agent.supervisor`).
    """
    settings = _settings(
        config_path,
        server__passthrough_url=upstream,
        server__upstream_key_env=upstream_key_env,
        server__host=host,
        server__port=port,
        server__workers=workers,
        store__log_dir=log_dir or os.environ.get("SHADOWTUNE_LOG_DIR"),
        server__auth="open" if open_mode else None,
    )
    if not settings.routes and not settings.server.passthrough_url:
        raise click.UsageError(
            "nothing to serve: give --upstream URL or a config file with routes (--config)"
        )
    os.environ["_SHADOWTUNE_SETTINGS"] = _dump(settings)
    srv = settings.server
    click.echo(
        f"shadowtune {__version__}: http://{srv.host}:{srv.port}/v1  "
        f"(log: {settings.store.log_dir}, workers: {srv.workers})",
        err=True,
    )
    from gateway.agent.supervisor import exec_supervisor

    sys.stderr.flush()
    exec_supervisor(os.environ["_SHADOWTUNE_SETTINGS"], log_level=log_level)


def _settings(config_path: str | None, **overrides: Any) -> Any:
    from pydantic import ValidationError

    from gateway.config import Settings

    try:
        return Settings.load(config_path, **overrides)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise click.ClickException("invalid configuration:\n" + "\n".join(lines)) from None
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read the configuration: {exc}") from None


def _dump(settings: Any) -> str:
    data = settings.model_dump(mode="json")
    token = settings.server.admin_token
    data["server"]["admin_token"] = token.get_secret_value() if token else None
    return json.dumps(data)


def _app_from_env() -> Any:
    """uvicorn factory (``uvicorn gateway.cli:_app_from_env --factory``): a self-contained gateway process
    (the log agent in threads of it); ``serve`` runs `gateway.agent.worker` processes instead."""
    from gateway.app import create_app
    from gateway.config import Settings

    data = json.loads(os.environ["_SHADOWTUNE_SETTINGS"])
    return create_app(Settings.model_validate(data))


# -- keys ----------------------------------------------------------------------------------
@main.group()
def keys() -> None:
    """Client API keys (only their hashes are stored)."""


def _log_dir_option(f: Any) -> Any:
    from gateway.admin_client import target_options

    f = click.option(
        "--log-dir", default=default_log_dir, show_default="./shadowtune-data", help="Call log directory."
    )(f)
    return target_options(f)


def _keys(target: Any) -> Any:
    from gateway.auth import KeyFile
    from gateway.state import StateUnavailable, describe

    try:
        return KeyFile(target.state)
    except (StateUnavailable, RuntimeError) as exc:
        raise click.ClickException(f"cannot reach the state at {describe(target.state)}: {exc}") from None


def _state_errors(fn: Any, *args: Any) -> Any:
    from gateway.state import StateUnavailable

    try:
        return fn(*args)
    except StateUnavailable as exc:
        raise click.ClickException(exc.message) from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@keys.command("create")
@click.argument("name")
@_log_dir_option
def keys_create(name: str, log_dir: str, target: Any) -> None:
    """Issue a key named NAME; prints it once."""
    from gateway.hints import KEYS_CREATED

    keys = _keys(target)
    first = not any(not k.get("revoked") for k in _state_errors(keys.load))
    try:
        key = _state_errors(keys.create, name)
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(key)
    click.echo(f"key {name!r} created; it is shown only once", err=True)
    if first:  # the gateway (auth: auto) leaves open mode now
        click.echo(KEYS_CREATED, err=True)


@keys.command("list")
@_log_dir_option
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def keys_list(log_dir: str, as_json: bool, target: Any) -> None:
    """List keys (names and prefixes, never the keys)."""
    rows = [{k: v for k, v in row.items() if k != "hash"} for row in _state_errors(_keys(target).load)]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        click.echo(f"{r['name']:<24} {r['prefix']}…  {'revoked' if r.get('revoked') else 'active'}")


@keys.command("revoke")
@click.argument("name")
@_log_dir_option
def keys_revoke(name: str, log_dir: str, target: Any) -> None:
    """Revoke the key named NAME (a running gateway stops accepting it within a second)."""
    _state_errors(_keys(target).revoke, name)
    click.echo(f"key {name!r} revoked")


# -- config --------------------------------------------------------------------------------
@main.group()
def config() -> None:
    """Inspect settings."""


@config.command("show")
@click.option("-c", "--config", "config_path", type=click.Path(exists=True, dir_okay=False))
def config_show(config_path: str | None) -> None:
    """Print the effective settings (secrets masked)."""
    settings = _settings(config_path)
    data = settings.model_dump(mode="json")
    if data["store"].get("state_url"):
        from gateway.state import describe

        data["store"]["state_url"] = describe(data["store"]["state_url"])  # no password
    click.echo(json.dumps(data, indent=2))


@config.command("reference")
def config_reference() -> None:
    """Print the settings reference (Markdown), generated from the settings' docstrings."""
    from gateway.config import reference_markdown

    click.echo(reference_markdown())


def _register_ops() -> None:
    from gateway import cli_ops

    for cmd in cli_ops.COMMANDS:
        main.add_command(cmd)


_register_ops()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
