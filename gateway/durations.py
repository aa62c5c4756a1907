"""Durations and moments as people type them: the one parser every command and policy uses.

* a duration is a number and a unit: ``90s``, ``30m``, ``1.5h``, ``7d``, ``2w``
  (spaces around are allowed);
* a moment is a duration *ago* or an ISO date/time (UTC when it names no zone).

Both raise `ValueError` with a message that says what is accepted; callers wrap it in
their own error (``click.BadParameter``, ``DriftError``, ...).
"""

from __future__ import annotations

import datetime as dt
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

FORMS = "a duration such as 90s, 30m, 1.5h, 7d or 2w"


def parse_duration(text: str) -> dt.timedelta:
    """``30m``, ``1.5h``, ``7d`` ... -> a timedelta."""
    m = _DURATION.match(text or "")
    if not m:
        raise ValueError(f"cannot read duration {text!r}: use {FORMS}")
    try:
        return dt.timedelta(seconds=float(m.group(1)) * _SECONDS[m.group(2)])
    except OverflowError:
        raise ValueError(f"duration {text!r} is too long: use {FORMS}") from None


def is_duration(text: str) -> bool:
    return bool(_DURATION.match(text or ""))


def parse_moment(text: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """A duration ago (``7d``: seven days before ``now``) or an ISO date/time -> an aware datetime."""
    if is_duration(text):
        try:
            return (now or dt.datetime.now(dt.UTC)) - parse_duration(text)
        except OverflowError:
            raise ValueError(f"{text!r} ago is before year 1: use {FORMS}") from None
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except (ValueError, AttributeError):
        raise ValueError(f"cannot read time {text!r}: use {FORMS} (ago) or an ISO date/time") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def epoch_us(value: dt.datetime | float) -> int:
    """A moment (a datetime, UTC when naive, or epoch seconds) as the log's epoch microseconds."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int(value.timestamp() * 1_000_000)
    return int(value * 1_000_000)
