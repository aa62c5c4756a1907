"""The options every command shares, defined once.

* ``--log-dir`` (`log_dir_option`): ``$SHADOWTUNE_LOG_DIR``, else ``$SHADOWTUNE_STORE__LOG_DIR``
  (the gateway's own setting), else ``./shadowtune-data``;
* ``--json`` (`json_option`): the command prints JSON (`gateway.clikit.output`) and nothing else
  on stdout;
* the gateway (`gateway_options`): ``--config``, ``--url``, ``--admin-token``, ``--state``, resolved
  by `gateway.admin_client.find_target` (``SHADOWTUNE_URL``, ``SHADOWTUNE_ADMIN_TOKEN``, the
  config's); the command receives ``target``;
* `DURATION` and `MOMENT`: click types over `gateway.durations` (``1.5h``; ``7d`` ago or an ISO
  date), so every ``--since`` reads the same forms;
* `handle_errors`: a decorator (or ``with`` block) that turns the store's, the state's, the
  admin API's and the given packages' errors into one-line ``click.ClickException``s.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
from collections.abc import Callable
from contextlib import ContextDecorator
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import click

from gateway import durations
from gateway.store.layout import DEFAULT_LOG_DIR, default_log_dir

if TYPE_CHECKING:
    from gateway.config import Settings

F = TypeVar("F", bound=Callable[..., Any])

LOG_DIR_DEFAULT = f"$SHADOWTUNE_LOG_DIR, $SHADOWTUNE_STORE__LOG_DIR or {DEFAULT_LOG_DIR}"


def log_dir_option(f: F) -> F:
    """``--log-dir``: the call log directory or URI (default `LOG_DIR_DEFAULT`)."""
    return click.option(
        "--log-dir",
        default=default_log_dir,
        show_default=LOG_DIR_DEFAULT,
        help="Call log directory or s3:// URI.",
    )(f)


def log_dir_override_option(f: F) -> F:
    """``--log-dir`` for a command that reads a config (``serve``): given, it overrides ``store.log_dir``."""
    return click.option(
        "--log-dir", help=f"Call log directory or s3:// URI (default: the config's, else {LOG_DIR_DEFAULT})."
    )(f)


def json_option(f: F) -> F:
    """``--json``: print JSON (the command gets ``as_json``)."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)


if TYPE_CHECKING:  # click 8.2+ types its ParamType; older ones cannot be subscripted
    _DurationType = click.ParamType[dt.timedelta, Any]
    _MomentType = click.ParamType[dt.datetime, Any]
else:
    _DurationType = _MomentType = click.ParamType


class Duration(_DurationType):
    """A duration (``30m``, ``1.5h``, ``7d``) -> `datetime.timedelta`."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, dt.timedelta):
            return value
        try:
            return durations.parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Moment(_MomentType):
    """A duration ago (``7d``) or an ISO date/time -> an aware `datetime.datetime`."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, dt.datetime):
            return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        try:
            return durations.parse_moment(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()
MOMENT = Moment()


def gateway_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--config``, ``--url``, ``--admin-token`` and ``--state``; the command gets ``target``
    (`gateway.admin_client.Target`).

    A command's own ``--log-dir`` keeps working: given explicitly it wins, else the config's."""

    @functools.wraps(f)
    def wrapper(**kwargs: Any) -> Any:
        from gateway.admin_client import TargetError, find_target

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
            "--url",
            help="Running gateway (default $SHADOWTUNE_URL, else --config's, else http://127.0.0.1:8000).",
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


def default_url() -> str:
    """The running gateway's base URL for commands without ``--config``: ``$SHADOWTUNE_URL``, else loopback."""
    from gateway.admin_client import DEFAULT_URL

    return (os.environ.get("SHADOWTUNE_URL") or DEFAULT_URL).rstrip("/").removesuffix("/v1")


def admin_token_option(f: F) -> F:
    """``--admin-token`` alone, for a command that reaches the admin API of the ``--url`` it is given."""
    return click.option(
        "--admin-token", envvar="SHADOWTUNE_ADMIN_TOKEN", help="Admin API token (env SHADOWTUNE_ADMIN_TOKEN)."
    )(f)


def _message(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    return message if isinstance(message, str) and message else str(exc)


def _gateway_errors() -> tuple[type[BaseException], ...]:
    from gateway.admin_client import AdminError, TargetError
    from gateway.state import StateUnavailable
    from gateway.store.layout import LogStoreError

    return (LogStoreError, AdminError, TargetError, StateUnavailable)


class handle_errors(ContextDecorator):
    """``@handle_errors(TrainerError)``: these errors (and the gateway's store, state and admin-API
    errors) become one-line `click.ClickException`s; anything else is a bug and keeps its traceback."""

    def __init__(self, *types: type[BaseException]) -> None:
        self.types = types

    def __enter__(self) -> handle_errors:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None and isinstance(exc, self.types + _gateway_errors()):
            raise click.ClickException(_message(exc)) from exc


def load_settings(config_path: str | None, **overrides: Any) -> Settings:
    """`gateway.config.Settings.load`, with an invalid or unreadable config as a clear error."""
    from pydantic import ValidationError

    from gateway.config import Settings

    try:
        return Settings.load(config_path, **overrides)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise click.ClickException("invalid configuration:\n" + "\n".join(lines)) from None
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read the configuration: {exc}") from None
