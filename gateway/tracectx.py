"""W3C trace context ids without the OpenTelemetry SDK (request workers import this, not telemetry).

A call's span id and trace id derive from its call id (`span_id_of`, `trace_id_of`), so the
log agent, which makes the spans later from the log, and the request worker, which forwards
the caller's ``traceparent`` to the upstream, agree on them without talking to each other.
"""

from __future__ import annotations

import hashlib

_HEX = frozenset("0123456789abcdef")


def span_id_of(call_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(call_id.encode(), digest_size=8).digest(), "big") or 1


def trace_id_of(call_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(call_id.encode(), digest_size=16).digest(), "big") or 1


def parse(value: str | None) -> tuple[int, int, int] | None:
    """``(trace_id, parent span id, flags)`` of a valid ``traceparent``, else None."""
    if not value:
        return None
    parts = value.strip().lower().split("-")
    if (
        len(parts) < 4
        or len(parts[0]) != 2
        or len(parts[1]) != 32
        or len(parts[2]) != 16
        or len(parts[3]) != 2
    ):
        return None
    if parts[0] == "ff" or not _HEX.issuperset(parts[0] + parts[1] + parts[2] + parts[3]):
        return None
    trace_id, span_id = int(parts[1], 16), int(parts[2], 16)
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, int(parts[3], 16)


def child_traceparent(value: str, call_id: str | None) -> str | None:
    """The ``traceparent`` to send upstream: the caller's trace, with the gateway's span of
    ``call_id`` as the parent when the gateway exports spans (``call_id`` given), else unchanged."""
    parsed = parse(value)
    if parsed is None:
        return None
    trace_id, span_id, flags = parsed
    if call_id is not None:
        span_id = span_id_of(call_id)
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"
