"""Upstream misbehaviour: recognising it, keeping secrets out of its reports, telling the operator.

What counts as an upstream fault (each one logged as an error, 5xx, so that error rates, the
dashboard and the controller count it):

* a 2xx answer whose JSON body does not parse (truncated, HTML, garbage): the caller gets a 502
  ``upstream_invalid_response`` instead of a body its client cannot decode;
* a stream that carries an error event — ``data: {"error": ...}`` (chat completions),
  ``event: error`` or ``response.failed`` (Responses API): relayed as it came, since the caller
  already has a 200, but logged with status 502 and the event's error type and message;
* connection failures, stalls, broken-off bodies, TLS failures, undecodable encodings (raised
  by `gateway.upstream.openai_compat`).

Secrets: callers see a generic message and the call id (`public_body`); the log row and stderr
get the detail with credentials redacted (`redact`): passwords in URLs, bearer tokens, ``sk-``
keys, key-like query parameters. `UpstreamHealth` counts failures per upstream for ``/healthz``
and writes at most one stderr line per upstream and error code every ``interval`` seconds.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from typing import TYPE_CHECKING, Any

import orjson

from gateway.errors import GatewayError, UpstreamError, error_body

if TYPE_CHECKING:
    from gateway.protocol.record import CallRecord

log = logging.getLogger("shadowtune.upstream")

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/\s:@]*):(?P<pw>[^@\s/]*)@")
_BEARER = re.compile(r"\b([Bb]earer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_SK = re.compile(r"\bsk-[A-Za-z0-9_-]{6,}")
_QUERY = re.compile(r"(?i)([?&](?:api[_-]?key|key|token|access_token|auth|sig|signature|password)=)[^&\s#]+")

UPSTREAM_CODES = frozenset(
    {
        "upstream_unavailable",
        "upstream_timeout",
        "upstream_connect_timeout",
        "upstream_tls_error",
        "upstream_invalid_response",
        "upstream_stream_error",
        "upstream_bad_encoding",
        "upstream_broke_off",
    }
)


def redact(text: str) -> str:
    """``text`` with credentials replaced by ``***`` (URL passwords, bearer tokens, keys)."""
    if not text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    text = _BEARER.sub(lambda m: f"{m[1]} ***", text)
    text = _SK.sub("sk-***", text)
    return _QUERY.sub(r"\1***", text)


@functools.lru_cache(maxsize=1024)  # an upstream's few URLs, on every call (10 µs of regexes each)
def safe_url(url: str) -> str:
    """An upstream URL fit for the log: no password, no key-like query values."""
    return redact(url)


def log_message(exc: GatewayError) -> str:
    """What the log row's ``error_message`` holds for ``exc``: its detail, redacted."""
    return redact(exc.detail or exc.message)


def public_body(exc: GatewayError, call_id: str | None) -> bytes:
    """The error body a caller gets: the generic message, plus the call id for upstream faults."""
    message = exc.message
    if call_id and exc.status >= 500:
        message = f"{message} (call {call_id}; the detail is in the gateway's log)"
    return error_body(redact(message), exc.type, param=exc.param, code=exc.code)


# -- recognising bad answers -------------------------------------------------------------------
def invalid_json(data: bytes) -> bool:
    """Whether a body that claims to be a JSON answer does not parse as a JSON object."""
    try:
        return not isinstance(orjson.loads(data), dict)
    except orjson.JSONDecodeError:
        return True


def invalid_answer(data: bytes, content_type: str) -> UpstreamError:
    """The 502 for a success status whose body is not the JSON object it should be."""
    head = data[:200].decode("utf-8", "replace")
    return UpstreamError(
        "the upstream answered with a body that is not valid JSON",
        code="upstream_invalid_response",
        detail=f"the upstream answered 2xx with {len(data)} bytes of invalid JSON ({content_type}): {head!r}",
    )


def body_error(data: bytes, is_stream: bool) -> tuple[str, str] | None:
    """``(error_type, message)`` for a success answer that is a fault anyway; None when it is fine."""
    if is_stream:
        return stream_error(data)
    if invalid_json(data):
        exc = invalid_answer(data, "application/json")
        return exc.type, log_message(exc)
    return None


def stream_error(sse: bytes) -> tuple[str, str] | None:
    """The first error event of an SSE body, as ``(error_type, message)``; None when it has none.

    The cheap substring test keeps ordinary chat streams (no ``"error"`` key anywhere) on one scan;
    a ``response.failed`` event always has one (its response's ``error``).
    """
    if b'"error"' not in sse:
        return None
    for block in sse.split(b"\n\n"):
        event = b""
        data: list[bytes] = []
        for line in block.splitlines():
            if line.startswith(b"event:"):
                event = line[6:].strip()
            elif line.startswith(b"data:"):
                data.append(line[5:].strip())
        if not data or data == [b"[DONE]"]:
            continue
        try:
            payload = orjson.loads(b"\n".join(data))
        except orjson.JSONDecodeError:
            continue
        if not isinstance(payload, dict):
            continue
        found = _event_error(event, payload)
        if found is not None:
            return found
    return None


def _event_error(event: bytes, payload: dict[str, Any]) -> tuple[str, str] | None:
    kind = payload.get("type")
    if kind == "response.failed" or event == b"response.failed":
        resp = payload.get("response")
        err = resp.get("error") if isinstance(resp, dict) else None
        return _pair(err if err is not None else "the upstream's response failed")
    if kind == "error" or event == b"error":
        err = payload.get("error", payload)
        if isinstance(err, dict) and err.get("type") == "error":  # Responses API: the code says what
            err = {**err, "type": err.get("code")}
        return _pair(err)
    if "error" in payload and payload["error"] is not None and "choices" not in payload:
        return _pair(payload["error"])
    return None


def _pair(err: Any) -> tuple[str, str]:
    if isinstance(err, dict):
        kind = err.get("type") or err.get("code") or "upstream_error"
        return str(kind), redact(str(err.get("message") or "error event in the upstream's stream"))
    return "upstream_error", redact(str(err))


# -- telling the operator -----------------------------------------------------------------------
class UpstreamHealth:
    """Per-upstream failure counts (for ``/healthz``) and rate-limited stderr lines."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.stats: dict[str, dict[str, Any]] = {}
        self._last_line: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def observe(self, rec: CallRecord) -> None:
        """Look at a finished call's row; count and report it if its upstream failed."""
        name = rec.upstream
        status = rec.status or 0
        if not name:
            return
        entry = self.stats.get(name)
        if status < 500 and status not in (401, 403):
            if entry is not None:
                entry["last_ok"] = time.time()
            return
        if status == 499:
            return
        if entry is None:
            entry = self.stats[name] = {"errors": 0, "last_ok": None}
        code = str(rec.error_type or status)
        entry["errors"] += 1
        entry["last_error"] = code
        entry["last_status"] = status
        entry["last_error_at"] = time.time()
        self._report(name, code, status, rec.error_message or "", rec.call_id or "")

    def _report(self, name: str, code: str, status: int, message: str, call_id: str) -> None:
        key = (name, code)
        now = time.monotonic()
        last = self._last_line.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last_line[key] = now
        more = self._suppressed.pop(key, 0)
        tail = f" ({more} more like it in the last {self.interval:g}s)" if more else ""
        log.warning(
            "upstream %r failed: %s %s: %s [call %s]%s", name, status, code, redact(message), call_id, tail
        )

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Counts per upstream name (never URLs): errors, last error code, status and times."""
        return {name: dict(entry) for name, entry in self.stats.items()}
