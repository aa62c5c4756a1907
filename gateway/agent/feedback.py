"""Feedback ownership for the request workers of ``shadowtune serve``, answered by the log agent.

Whether a key may post on a call, and whether a post repeats one already stored, are read
from the log (`gateway.signals.ownership.FeedbackIndex`): recent calls and events from the
WAL, older ones from the Parquet log through DuckDB. The index lives in the host's log
agent, fed by the agent's WAL tail (the same parse that makes telemetry), and a worker asks
it over the agent's socket with one request per post (`ask`), so request workers never load
pyarrow or DuckDB. The agent reads the WAL up to the moment it is asked, so a call a worker
answered a moment ago (its record written before its answer) is found.

When the agent cannot be reached (it is being restarted), ownership cannot be checked: a
keyed post is answered 503 ``log_agent_unavailable`` (retry); in open mode there is no
owner to check and the post is stored (readers count one event per call, kind and poster).

No pyarrow, DuckDB or OpenTelemetry here (the worker imports this module).
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from gateway.errors import Overloaded
from gateway.signals.feedback import CallOwner

LOOKUP_PATH = "/_agent/feedback/lookup"
STORED_FIELDS = ("event_id", "value", "value_num", "comment")


async def ask(
    link: Any, call_id: str, kind: str, poster: str, *, wait: bool, wait_s: float = 0.5
) -> tuple[CallOwner | None, dict[str, Any] | None]:
    """The call's owner and the latest stored ``(call, kind, poster)`` event, from the agent."""
    body = orjson.dumps({"call_id": call_id, "kind": kind, "poster": poster, "wait": wait})
    try:
        async with link.session().post(
            "http://shadowtune-agent" + LOOKUP_PATH,
            data=body,
            headers={"content-type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=wait_s + 15, sock_connect=2),
        ) as resp:
            if resp.status != 200:
                raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
            answer = orjson.loads(await resp.read())
    except (TimeoutError, aiohttp.ClientError, OSError, orjson.JSONDecodeError) as exc:
        if not wait:  # open mode: nothing to check, the post is stored
            return None, None
        raise Overloaded(
            "feedback ownership cannot be checked now (the log agent is restarting); try again in a moment",
            code="log_agent_unavailable",
            detail=repr(exc),
        ) from None
    owner = answer.get("owner")
    found = (
        CallOwner(str(owner["call_id"]), owner.get("client_key"), bool(owner.get("recent")))
        if owner
        else None
    )
    return found, answer.get("stored")


def answer(index: Any, body: dict[str, Any]) -> dict[str, Any]:
    """The agent's side of `ask` (blocking: run it in a thread). ``index`` is a `FeedbackIndex`."""
    call_id, kind, poster = str(body["call_id"]), str(body["kind"]), str(body["poster"])
    owner = index.owner(call_id, wait=bool(body.get("wait")))
    stored = index.existing(owner.call_id if owner else call_id, call_id, kind, poster)
    return {
        "owner": None
        if owner is None
        else {"call_id": owner.call_id, "client_key": owner.client_key, "recent": owner.recent},
        "stored": None if stored is None else {k: stored.get(k) for k in STORED_FIELDS},
    }
