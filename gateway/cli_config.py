"""``shadowtune keys`` (client API keys, in the state backend) and ``shadowtune config`` (settings)."""

from __future__ import annotations

from typing import Any

import click

from gateway.clikit.options import gateway_options, handle_errors, json_option, load_settings, log_dir_option
from gateway.clikit.output import echo_json, emit, table


# -- keys ----------------------------------------------------------------------------------
@click.group()
def keys() -> None:
    """Client API keys (only their hashes are stored)."""


def _keys(target: Any) -> Any:
    from gateway.auth import KeyFile
    from gateway.state import StateUnavailable, describe

    try:
        return KeyFile(target.state)
    except (StateUnavailable, RuntimeError) as exc:
        raise click.ClickException(f"cannot reach the state at {describe(target.state)}: {exc}") from None


@keys.command("create")
@click.argument("name")
@log_dir_option
@gateway_options
@json_option
@handle_errors(ValueError, OSError)
def keys_create(name: str, log_dir: str, target: Any, as_json: bool) -> None:
    """Issue a key named NAME; prints it once."""
    from gateway.hints import KEYS_CREATED

    keys = _keys(target)
    first = not any(not k.get("revoked") for k in keys.load())
    key = keys.create(name)
    if as_json:
        echo_json({"name": name, "key": key, "prefix": key[:10], "first": first})
        return
    click.echo(key)
    click.echo(f"key {name!r} created; it is shown only once", err=True)
    if first:  # the gateway (auth: auto) leaves open mode now
        click.echo(KEYS_CREATED, err=True)


@keys.command("list")
@log_dir_option
@gateway_options
@json_option
@handle_errors(ValueError)
def keys_list(log_dir: str, as_json: bool, target: Any) -> None:
    """List keys (names and prefixes, never the keys)."""
    rows = [{k: v for k, v in row.items() if k != "hash"} for row in _keys(target).load()]
    emit(
        rows,
        as_json,
        lambda rs: (
            table(
                rs,
                [
                    ("NAME", lambda r: r["name"]),
                    ("PREFIX", lambda r: f"{r['prefix']}…"),
                    ("STATUS", lambda r: "revoked" if r.get("revoked") else "active"),
                ],
            )
            if rs
            else "no keys"
        ),
    )


@keys.command("revoke")
@click.argument("name")
@log_dir_option
@gateway_options
@json_option
@handle_errors(ValueError)
def keys_revoke(name: str, log_dir: str, target: Any, as_json: bool) -> None:
    """Revoke the key named NAME (a running gateway stops accepting it within a second)."""
    _keys(target).revoke(name)
    emit({"name": name, "revoked": True}, as_json, f"key {name!r} revoked")


# -- config --------------------------------------------------------------------------------
@click.group()
def config() -> None:
    """Inspect settings."""


@config.command("show")
@click.option("-c", "--config", "config_path", type=click.Path(exists=True, dir_okay=False))
@json_option
def config_show(config_path: str | None, as_json: bool) -> None:
    """Print the effective settings as JSON (secrets masked)."""
    settings = load_settings(config_path)
    data = settings.model_dump(mode="json")
    if data["store"].get("state_url"):
        from gateway.state import describe

        data["store"]["state_url"] = describe(data["store"]["state_url"])  # no password
    echo_json(data)


@config.command("reference")
@json_option
def config_reference(as_json: bool) -> None:
    """Print the settings reference (Markdown), generated from the settings' docstrings."""
    from gateway.config import reference_markdown

    text = reference_markdown()
    if not as_json:
        click.echo(text)
        return
    rows = []
    for line in text.splitlines()[2:]:
        setting, env, default, meaning = (c.strip() for c in line.strip("| ").split(" | ", 3))
        rows.append(
            {
                "setting": setting.strip("`"),
                "env": env.strip("`"),
                "default": default.strip("`"),
                "meaning": meaning,
            }
        )
    echo_json(rows)
