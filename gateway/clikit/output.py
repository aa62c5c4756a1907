"""How commands print: one JSON style, text otherwise.

* `echo_json`: indented JSON on stdout (datetimes as ISO text, anything else unknown as its
  ``str``); ``lines=True`` prints one compact object a line (a command that keeps running);
* `emit`: JSON under ``--json``, else the text a function makes of the same data;
* `table`: rows as aligned text columns under a header.

Progress, notes and warnings go to stderr (``click.echo(..., err=True)``), so stdout under
``--json`` is JSON only.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import click
import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def _default(value: Any) -> Any:
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return str(value)


def dumps(data: Any, *, indent: bool = True) -> str:
    """The JSON text of ``data`` as every command prints it (NaN and infinity become null)."""
    return orjson.dumps(
        data, default=_default, option=_OPTIONS | (orjson.OPT_INDENT_2 if indent else 0)
    ).decode()


def echo_json(data: Any, *, lines: bool = False) -> None:
    click.echo(dumps(data, indent=not lines))


def emit(data: Any, as_json: bool, text: Callable[[Any], str] | str) -> None:
    """Print ``data`` as JSON under ``--json``, else ``text(data)`` (or ``text`` itself)."""
    if as_json:
        echo_json(data)
    else:
        click.echo(text(data) if callable(text) else text)


Column = tuple[str, Callable[[dict[str, Any]], Any]]
"""A column: its header and how a row's cell is made."""


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, dt.datetime):
        return f"{value:%Y-%m-%d %H:%M:%S}"
    return str(value).replace("\n", " ")


def table(rows: Iterable[dict[str, Any]], columns: Sequence[Column], *, last_free: bool = True) -> str:
    """Aligned columns under a header; the last column is not padded (it may be long text)."""
    cells = [[_cell(fn(r)) for _, fn in columns] for r in rows]
    headers = [h for h, _ in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]
    if last_free:
        widths[-1] = 0

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    return "\n".join([line(headers), *(line(c) for c in cells)])
