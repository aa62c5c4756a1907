"""CallRecord: the one record the request path appends to the call log per upstream call.

The request path builds one record per call (`CallRecord.begin`, then `CallRecord.annotate`
with the caller's request and headers), sets what it learns as the call goes (route,
variant, upstream, timings, status, the raw bodies) and appends `CallRecord.to_wal` —
one JSON line in the write-ahead log (`gateway.store.writer.LogWriter.append`). A shadow
call or a failed candidate attempt is a record of its own (`shadow_of`, `attempt_of`).

The boundary is `to_wal`: every field is checked against its column's type there, so no
value a caller controls can break a column of the log (``gateway.store.schema``):

* a text field (``user``, ``session_id``, ``regenerate_of``, the route, ...) is a string;
  a value that is not one (an object, a number, a list, a boolean) is kept as its JSON
  text (``{"x": 1}`` → ``'{"x":1}'``);
* ``metadata`` — OpenAI's is a map of strings to strings, at most 16 keys — is kept as
  the JSON text of an object whose values are all strings: a value that is not a string
  becomes its JSON text; a ``metadata`` that is not an object is kept as its JSON text;
  no key is dropped (the upstream, not the log, enforces OpenAI's limits);
* ``tags`` is a list of strings (the ``x-shadowtune-tags`` header, then ``metadata.tags``:
  a comma-separated string or a list whose items follow the text rule);
* an integer outside int64, or a value of the wrong type in a number or boolean field,
  becomes null.

Only the log's copy is normalised: the request body goes upstream byte for byte.

WAL keys are the column names of ``CALLS_SCHEMA`` plus six that feed derived columns or
telemetry and are not columns: ``response_sse`` (the raw SSE text of a streamed answer,
assembled into ``response`` off the request path), ``price_in`` / ``price_out`` (USD per
million tokens, for ``cost_usd``), ``traceparent`` (the caller's W3C trace context),
``attempt`` (``fallback`` or ``shadow`` for a call the user did not see) and ``redact``
(the redaction the log agent applies to the bodies, `gateway.protocol.redact`: the WAL
holds them raw). Null fields are
left out of the line. Derived columns (``response_id``, ``output_text``,
``finish_reason``, token counts, ``cost_usd``) are filled by ``gateway.store.rows``.

Import-light: orjson only, so `trainer` and `evals` may import it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


@dataclass(slots=True)
class CallRecord:
    """One upstream call, as the call log keeps it (see the module docstring)."""

    call_id: str
    """``call_...`` id (the response's ``x-request-id``)."""
    ts: int
    """Start of the call, epoch microseconds (UTC)."""
    endpoint: str
    """``chat.completions`` or ``embeddings``."""
    served: bool = True
    """Whether the user saw this answer."""
    parent_call_id: str | None = None
    """The served call a shadow or failed-candidate attempt belongs to."""
    attempt: str | None = None
    """``fallback`` / ``shadow`` for a call the user did not see; None for the served call."""
    route: str | None = None
    """The route: the model name the client asked for."""
    route_version: int | None = None
    mode: str | None = None
    """``off``, ``shadow``, ``canary`` or ``primary``."""
    variant: str | None = None
    """``baseline`` or ``candidate``."""
    upstream: str | None = None
    """Name of the upstream in the config (``passthrough`` in zero-config mode)."""
    upstream_model: str | None = None
    provider: str | None = None
    price_in: float | None = None
    price_out: float | None = None
    client_key: str | None = None
    """Name of the client API key (never the key)."""
    user: str | None = None
    """The request's ``user``."""
    session_id: str | None = None
    """``x-shadowtune-session`` header, else ``metadata.session_id``."""
    tags: list[str] | None = None
    metadata: str | None = None
    """JSON text of the request's ``metadata`` (string values; see the module docstring)."""
    regenerate_of: str | None = None
    """``x-shadowtune-regenerate-of`` header: the call this one regenerates."""
    traceparent: str | None = None
    stream: bool | None = None
    request: str | None = None
    """The request body as sent (None when the route stores no bodies)."""
    response: str | None = None
    """The response body (JSON), when not streamed."""
    response_sse: str | None = None
    """The raw SSE text of a streamed answer."""
    output_text: str | None = None
    status: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    upstream_ms: float | None = None
    overhead_ms: float | None = None
    redact: dict[str, Any] | None = None
    """The route's redaction (`gateway.protocol.redact.log_spec`), applied when the line becomes a row."""

    # -- building -----------------------------------------------------------------------
    @classmethod
    def begin(cls, call_id: str, ts: int, endpoint: str) -> CallRecord:
        """The record of a call that has just arrived."""
        return cls(call_id=call_id, ts=ts, endpoint=endpoint)

    def annotate(self, req: Mapping[str, Any], headers: Mapping[bytes, bytes]) -> None:
        """Take ``user``, session, tags, ``metadata`` and trace context from the caller."""
        user = req.get("user")
        self.user = user if user is None or type(user) is str else json_text(user)
        raw_meta = req.get("metadata")
        meta: Mapping[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
        if raw_meta is not None:
            self.metadata = metadata_text(raw_meta)
        session = headers.get(b"x-shadowtune-session")
        if session:
            self.session_id = session.decode("latin-1")
        else:
            sid = meta.get("session_id")
            self.session_id = sid if sid is None or type(sid) is str else json_text(sid)
        tags: list[str] = []
        raw = headers.get(b"x-shadowtune-tags")
        if raw:
            tags.extend([t.strip() for t in raw.decode("latin-1").split(",") if t.strip()])
        mt = meta.get("tags")
        if isinstance(mt, str):
            tags.extend([t.strip() for t in mt.split(",") if t.strip()])
        elif isinstance(mt, list):
            tags.extend([t if type(t) is str else json_text(t) for t in mt])
        elif mt is not None:
            tags.append(json_text(mt))
        self.tags = tags or None
        regen = headers.get(b"x-shadowtune-regenerate-of")
        if regen:
            self.regenerate_of = regen.decode("latin-1")
        tp = headers.get(b"traceparent")
        if tp:
            self.traceparent = tp.decode("latin-1")

    def attempt_of(self, call_id: str, attempt: str) -> CallRecord:
        """A copy for an attempt the user did not see (a failed candidate before fallback)."""
        return dataclasses.replace(
            self, call_id=call_id, parent_call_id=self.call_id, served=False, attempt=attempt
        )

    def shadow_of(self, call_id: str, ts: int, variant: str, stream: bool) -> CallRecord:
        """The record of a shadow call: the served call's caller fields, none of its outcome."""
        return CallRecord(
            call_id=call_id,
            ts=ts,
            endpoint=self.endpoint,
            served=False,
            parent_call_id=self.call_id,
            attempt="shadow",
            route=self.route,
            route_version=self.route_version,
            mode=self.mode,
            variant=variant,
            client_key=self.client_key,
            user=self.user,
            session_id=self.session_id,
            tags=self.tags,
            metadata=self.metadata,
            traceparent=self.traceparent,
            stream=stream,
            request=self.request,
            redact=self.redact,
        )

    # -- the boundary -------------------------------------------------------------------
    def to_wal(self) -> dict[str, Any]:
        """The WAL line's object: non-null fields, each of its column's type.

        Written out field by field (no loop), in six parts: this runs once per call on the
        request path. A test checks that every field is here.
        """
        out: dict[str, Any] = {}
        self._wal_call(out)
        self._wal_route(out)
        self._wal_caller(out)
        self._wal_request(out)
        self._wal_answer(out)
        self._wal_timings(out)
        return out

    def _wal_call(self, out: dict[str, Any]) -> None:
        """`to_wal`: the call's identity."""
        s: Any
        i: Any
        b: Any
        if (s := self.call_id) is not None:
            out["call_id"] = s if type(s) is str else _as_text(s)
        if type(i := self.ts) is int and _I64_MIN <= i <= _I64_MAX:
            out["ts"] = i
        if (s := self.endpoint) is not None:
            out["endpoint"] = s if type(s) is str else _as_text(s)
        if type(b := self.served) is bool:
            out["served"] = b
        if (s := self.parent_call_id) is not None:
            out["parent_call_id"] = s if type(s) is str else _as_text(s)
        if (s := self.attempt) is not None:
            out["attempt"] = s if type(s) is str else _as_text(s)
        if (s := self.route) is not None:
            out["route"] = s if type(s) is str else _as_text(s)

    def _wal_route(self, out: dict[str, Any]) -> None:
        """`to_wal`: the route and upstream."""
        s: Any
        i: Any
        if type(i := self.route_version) is int and _I64_MIN <= i <= _I64_MAX:
            out["route_version"] = i
        if (s := self.mode) is not None:
            out["mode"] = s if type(s) is str else _as_text(s)
        if (s := self.variant) is not None:
            out["variant"] = s if type(s) is str else _as_text(s)
        if (s := self.upstream) is not None:
            out["upstream"] = s if type(s) is str else _as_text(s)
        if (s := self.upstream_model) is not None:
            out["upstream_model"] = s if type(s) is str else _as_text(s)
        if (s := self.provider) is not None:
            out["provider"] = s if type(s) is str else _as_text(s)

    def _wal_caller(self, out: dict[str, Any]) -> None:
        """`to_wal`: prices and the caller."""
        s: Any
        f: Any
        if type(f := self.price_in) is float or (type(f) is int and _I64_MIN <= f <= _I64_MAX):
            out["price_in"] = f
        if type(f := self.price_out) is float or (type(f) is int and _I64_MIN <= f <= _I64_MAX):
            out["price_out"] = f
        if (s := self.client_key) is not None:
            out["client_key"] = s if type(s) is str else _as_text(s)
        if (s := self.user) is not None:
            out["user"] = s if type(s) is str else _as_text(s)
        if (s := self.session_id) is not None:
            out["session_id"] = s if type(s) is str else _as_text(s)

    def _wal_request(self, out: dict[str, Any]) -> None:
        """`to_wal`: the request."""
        s: Any
        b: Any
        if (tags := self.tags) is not None:
            out["tags"] = (
                tags if type(tags) is list and all(type(t) is str for t in tags) else text_list(tags)
            )
        if (s := self.metadata) is not None:
            out["metadata"] = s if type(s) is str else _as_text(s)
        if (s := self.regenerate_of) is not None:
            out["regenerate_of"] = s if type(s) is str else _as_text(s)
        if (s := self.traceparent) is not None:
            out["traceparent"] = s if type(s) is str else _as_text(s)
        if type(b := self.stream) is bool:
            out["stream"] = b
        if (s := self.request) is not None:
            out["request"] = s if type(s) is str else _as_text(s)

    def _wal_answer(self, out: dict[str, Any]) -> None:
        """`to_wal`: the answer."""
        s: Any
        i: Any
        if (s := self.response) is not None:
            out["response"] = s if type(s) is str else _as_text(s)
        if (s := self.response_sse) is not None:
            out["response_sse"] = s if type(s) is str else _as_text(s)
        if (s := self.output_text) is not None:
            out["output_text"] = s if type(s) is str else _as_text(s)
        if type(i := self.status) is int and _I64_MIN <= i <= _I64_MAX:
            out["status"] = i
        if (s := self.error_type) is not None:
            out["error_type"] = s if type(s) is str else _as_text(s)
        if (s := self.error_message) is not None:
            out["error_message"] = s if type(s) is str else _as_text(s)

    def _wal_timings(self, out: dict[str, Any]) -> None:
        """`to_wal`: timings and the redaction."""
        f: Any
        if type(f := self.latency_ms) is float or (type(f) is int and _I64_MIN <= f <= _I64_MAX):
            out["latency_ms"] = f
        if type(f := self.ttft_ms) is float or (type(f) is int and _I64_MIN <= f <= _I64_MAX):
            out["ttft_ms"] = f
        if type(f := self.upstream_ms) is float or (type(f) is int and _I64_MIN <= f <= _I64_MAX):
            out["upstream_ms"] = f
        if type(f := self.overhead_ms) is float or (type(f) is int and _I64_MIN <= f <= _I64_MAX):
            out["overhead_ms"] = f
        if type(r := self.redact) is dict:  # set by the gateway, never from the request
            out["redact"] = r


_TYPES = {f.name: f.type for f in dataclasses.fields(CallRecord)}
_TEXT = tuple(n for n, t in _TYPES.items() if t in ("str", "str | None"))
_INT = tuple(n for n, t in _TYPES.items() if t in ("int", "int | None"))
_FLOAT = tuple(n for n, t in _TYPES.items() if t == "float | None")
_BOOL = tuple(n for n, t in _TYPES.items() if t in ("bool", "bool | None"))
_OTHER = ("tags", "redact")
assert len(_TEXT) + len(_INT) + len(_FLOAT) + len(_BOOL) + len(_OTHER) == len(_TYPES), (
    "a field has no type rule"
)

WAL_FIELDS: tuple[str, ...] = tuple(_TYPES)
"""Every key `CallRecord.to_wal` may write."""


def json_text(value: Any) -> str:
    """``value`` as JSON text (``repr`` for what JSON cannot hold)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError: an int over 64 bits, a surrogate, an object
        return json.dumps(value, default=repr)


def _as_text(value: Any) -> str:
    return str.__str__(value) if isinstance(value, str) else json_text(value)


def text_list(value: Any) -> list[str]:
    """A list of strings: each item kept if a string, else its JSON text."""
    items = value if isinstance(value, list | tuple) else [value]
    return [t if type(t) is str else json_text(t) for t in items]


def metadata_text(value: Any) -> str:
    """JSON text of a ``metadata`` value: an object of string values, or the value's JSON text."""
    if isinstance(value, dict):
        if all(type(v) is str for v in value.values()):
            return json_text(value)
        return json_text({str(k): v if type(v) is str else json_text(v) for k, v in value.items()})
    return json_text(value)
