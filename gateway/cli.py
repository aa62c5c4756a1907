"""The ``shadowtune`` command: the root group and ``serve``.

Every other command is in a group loaded only when named (`gateway.clikit.registry`): the
gateway's own in `gateway.cli_ops` (``logs``, ``routes``, ``feedback``) and
`gateway.cli_config` (``keys``, ``config``), the trainer's and evals' under the
``shadowtune.commands`` entry points, so ``shadowtune serve`` never imports torch. Their
shared options and printing are in `gateway.clikit`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from gateway import __version__
from gateway.clikit.options import load_settings, log_dir_override_option
from gateway.clikit.registry import LazyRoot


@click.group(cls=LazyRoot)
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
@log_dir_override_option
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
    settings = load_settings(
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
