"""The root group: every command group is ``NAME = module:attr``, loaded only when named.

The gateway's own groups are listed in `BUILTIN`; the trainer's, evals' and any plugin's come
from the installed ``shadowtune.commands`` entry points (`pyproject.toml`). Both are
`importlib.metadata.EntryPoint`s and load the same way; a built-in name wins. A group whose
optional dependencies are missing becomes a command that says what to install.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

import click

GROUP = "shadowtune.commands"

BUILTIN = {
    "config": "gateway.cli_config:config",
    "feedback": "gateway.cli_ops:feedback",
    "keys": "gateway.cli_config:keys",
    "logs": "gateway.cli_ops:logs",
    "routes": "gateway.cli_ops:routes",
}
"""The gateway's own groups (``serve`` is the root's own command)."""


def groups() -> dict[str, EntryPoint]:
    """Every group by name: the installed entry points, then `BUILTIN` over them."""
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    found.update({name: EntryPoint(name, value, GROUP) for name, value in BUILTIN.items()})
    return found


class LazyRoot(click.Group):
    """A root group that loads its groups (`groups`) only when one is named."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(groups()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is not None:
            return cmd
        ep = groups().get(name)
        if ep is None:
            return None
        try:
            loaded = ep.load()
        except ImportError as exc:
            return _unavailable(name, exc)
        if not isinstance(loaded, click.Command):
            raise TypeError(f"{GROUP} entry {ep.name} = {ep.value} is not a click command")
        return loaded


def _unavailable(name: str, exc: ImportError) -> click.Command:
    message = (
        f"'{name}' needs an optional part of Shadowtune that is not installed ({exc}); "
        "try: pip install 'shadowtune[train,evals]'"
    )

    def unavailable() -> None:
        raise click.ClickException(message)

    return click.Command(name, callback=unavailable, short_help="(not installed)", help=message)
