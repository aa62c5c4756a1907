"""Progress bars for long commands (dataset builds, training, evals, trigger steps), quiet under ``--json``.

`bar(total, label)` returns a `Bar`: a tqdm bar on stderr with the rate and ETA when tqdm is
installed and progress is on, else nothing is drawn; either way its ``listeners`` see every
update (the retraining run record shows a step's progress in ``shadowtune triggers status``).
Progress is off under ``--json`` (any command of this process), when `set_quiet` says so,
when ``SHADOWTUNE_PROGRESS=0``, or inside `quiet()`; ``SHADOWTUNE_PROGRESS=1`` draws bars even when stderr is not a terminal.

`rounded` makes the numbers of a summary readable (``0.123456789`` -> ``0.1235``).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

Listener = Callable[[dict[str, Any]], None]
"""Sees ``{"label", "done", "total", "elapsed_s", "eta_s", **info}`` after each update."""

_QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("shadowtune_progress_quiet", default=False)
_LISTENERS: contextvars.ContextVar[tuple[Listener, ...]] = contextvars.ContextVar(
    "shadowtune_progress_listeners", default=()
)


def enabled() -> bool:
    """Whether bars are drawn here (not whether listeners are told)."""
    env = os.environ.get("SHADOWTUNE_PROGRESS")
    if _QUIET.get() or env == "0" or "--json" in sys.argv[1:]:  # every command's --json is quiet
        return False
    return env == "1" or sys.stderr.isatty()


def set_quiet(value: bool = True) -> None:
    """Turn bars off (or on) for the rest of this context (a command run with ``--json``)."""
    _QUIET.set(value)


@contextlib.contextmanager
def quiet(value: bool = True) -> Iterator[None]:
    token = _QUIET.set(value)
    try:
        yield
    finally:
        _QUIET.reset(token)


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Every bar opened inside reports its updates to ``listener`` too."""
    token = _LISTENERS.set((*_LISTENERS.get(), listener))
    try:
        yield
    finally:
        _LISTENERS.reset(token)


class Bar:
    """One bar: `update` by a count, `set` to a position; `close` (or leave the ``with``) when done."""

    def __init__(self, total: float | None, label: str, *, unit: str = "it", every_s: float = 1.0) -> None:
        self.total = total
        self.label = label
        self.done = 0.0
        self.info: dict[str, Any] = {}
        self.started = time.monotonic()
        self.every_s = every_s
        self._told = 0.0
        self.listeners = _LISTENERS.get()
        self._tqdm: Any = None
        if enabled():
            try:
                from tqdm import tqdm
            except ImportError:  # pragma: no cover - tqdm comes with the train and evals extras
                tqdm = None
            if tqdm is not None:
                self._tqdm = tqdm(total=total, desc=label, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1, **info: Any) -> None:
        self.set(self.done + n, **info)

    def set(self, done: float, total: float | None = None, **info: Any) -> None:
        if total is not None:
            self.total = total
        step, self.done = done - self.done, done
        self.info.update(info)
        if self._tqdm is not None:
            if total is not None:
                self._tqdm.total = total
            if info:
                self._tqdm.set_postfix(rounded(info), refresh=False)
            self._tqdm.update(int(step) if float(step).is_integer() else step)
        now = time.monotonic()
        if self.listeners and (now - self._told >= self.every_s or (self.total and done >= self.total)):
            self._told = now
            self._tell()

    def snapshot(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        eta = None
        if self.total and self.done:
            eta = round(elapsed / self.done * max(self.total - self.done, 0), 1)
        return {
            "label": self.label,
            "done": self.done,
            "total": self.total,
            "elapsed_s": round(elapsed, 1),
            "eta_s": eta,
            **rounded(self.info),
        }

    def _tell(self) -> None:
        snap = self.snapshot()
        for listener in self.listeners:
            try:
                listener(snap)
            except Exception as exc:  # a listener never breaks the work it watches...
                if getattr(exc, "stops_work", False):  # ...unless it means to (a cancelled run)
                    raise

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        if self.listeners:
            self._tell()


def bar(total: float | None, label: str, *, unit: str = "it") -> Bar:
    return Bar(total, label, unit=unit)


def rounded(value: Any, digits: int = 4) -> Any:
    """``value`` with its floats rounded to ``digits`` significant digits (dicts and lists too)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return value
        return float(f"{value:.{digits}g}")
    if isinstance(value, Mapping):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v, digits) for v in value]
    return value
