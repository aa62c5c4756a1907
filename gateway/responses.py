"""``/v1/responses`` (the Responses API) and ``/v1/completions`` (legacy) on the hot path.

Both are served by `gateway.hotpath.HotPath` exactly as chat completions are: the body is
forwarded as bytes, streams (the Responses API's typed events — ``response.created``,
``response.output_text.delta``, ``response.completed``, ``error``...) are relayed event by
event, and request and answer go to the same call log, told apart by the ``endpoint`` column
(``responses``, ``completions``; `gateway.store.surfaces` fills their derived columns). Routes,
canary, shadow, fallback, error handling and secrets work the same. This module holds only
what differs: the paths, the request checks, and the Responses API's server-side state.

Server-side state: a Responses request that names a ``previous_response_id`` (or a
``conversation``) continues a conversation stored *by the upstream that answered it*. The
other variant cannot know that id, so such a request is not self-contained and:

* it is never shadowed (the shadow would only answer "previous response not found");
* it is served by the variant whose upstream produced the id (`ResponseOrigins`), else by
  the baseline — the canary hash is not consulted, since a share change could move the
  conversation;
* the row gets the tag ``stateful:baseline`` or ``stateful:candidate`` (the reason), and the
  skipped shadow is counted under that reason in the shadow metrics.

So the candidate sees self-contained Responses requests (``store: false`` with the history
in ``input``, or first turns).

`ResponseOrigins` is the memory of which route, variant, upstream and client key produced
each Responses id the gateway served: every worker of every replica shares it through the
state backend (`gateway.state`: a file per id, or a PostgreSQL table), for
``store.response_ids_days`` (OpenAI keeps stored responses 30 days), with a bounded cache of
its own in each worker. An id is noted before the end of its answer reaches the caller, so a
follow-up sent to any worker finds it; the note comes from the answer's bytes, so routes
with ``store_bodies: false`` are remembered too. While the backend is unreachable the worker's
own cache still serves, and notes it could not share are counted (``unshared``). The stored
responses themselves (retrieve, delete, input items, cancel) are forwarded by
`gateway.stored_responses`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.errors import InvalidRequest
from gateway.routing.modes import Plan
from gateway.state.base import StateUnavailable

if TYPE_CHECKING:
    from gateway.protocol.record import CallRecord
    from gateway.routing.state import RouteState
    from gateway.state.base import StateBackend

T = TypeVar("T")
log = logging.getLogger("shadowtune")

PATHS = {
    "/v1/responses": "responses",
    "/responses": "responses",
    "/v1/completions": "completions",
    "/completions": "completions",
}
UPSTREAM_PATH = {"responses": "/responses", "completions": "/completions"}
STREAMING = frozenset({"chat.completions", "responses", "completions"})

_RESPONSE_ID = re.compile(rb'"id"\s*:\s*"(resp_[A-Za-z0-9_.:+=~-]{1,200})"')
_VALID_ID = re.compile(r"[A-Za-z0-9_.:+=~-]{1,256}")
_BACKEND_WAIT_S = 10.0
# the backend's calls run on threads of their own: behind the shared default pool, a busy worker
# (make fuzz at load 30 on 2 cores) made a lookup wait past its deadline
_EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="response-ids")


def validate(req: dict[str, Any], endpoint: str) -> None:
    """The checks of a ``responses`` / ``completions`` body beyond ``model`` (400 on failure)."""
    stream = req.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    if endpoint == "responses":
        value = req.get("input")
        if value is not None and not isinstance(value, str | list):
            raise InvalidRequest("'input' must be a string or an array of input items", param="input")
        prev = req.get("previous_response_id")
        if prev is not None and not isinstance(prev, str):
            raise InvalidRequest("'previous_response_id' must be a string", param="previous_response_id")
    elif endpoint == "completions":
        prompt = req.get("prompt")
        if not isinstance(prompt, str | list):
            raise InvalidRequest("'prompt' is required: a string or an array", param="prompt")
        n = req.get("n")
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise InvalidRequest("'n' must be a positive integer", param="n")


class ResponseOrigins:
    """Which route, variant and upstream produced each Responses id (see the module docstring)."""

    def __init__(self, backend: StateBackend | None, ttl_s: float = 30 * 86400.0, size: int = 50_000) -> None:
        self.backend = backend
        self.ttl = ttl_s
        self.size = size
        self.unshared = 0  # notes the backend did not take (unreachable): this worker knows them only
        self._ids: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()

    async def note(self, rec: CallRecord, head: bytes | list[bytes]) -> None:
        """Remember the id in the answer ``head`` (its first bytes or chunks) of a served call."""
        if rec.endpoint != "responses" or rec.status != 200 or not rec.served or rec.upstream is None:
            return
        found = response_id_in(head)
        if found is None:
            return
        origin = {"route": rec.route, "variant": rec.variant, "upstream": rec.upstream, "key": rec.client_key}
        self._put(found, origin)
        if self.backend is None:
            return
        try:
            await _in_thread(self.backend.note_response, found, origin, self.ttl)
        except (StateUnavailable, TimeoutError):
            self.unshared += 1
            if self.unshared in (1, 10, 100) or self.unshared % 1000 == 0:
                log.warning("response id %s not shared with the other workers (state backend down)", found)

    def _put(self, response_id: str, origin: dict[str, Any]) -> None:
        self._ids[response_id] = origin
        self._ids.move_to_end(response_id)
        while len(self._ids) > self.size:
            self._ids.popitem(last=False)

    async def origin(self, response_id: str) -> dict[str, Any] | None:
        """The origin of ``response_id``: this worker's cache, else the shared backend.

        Raises `StateUnavailable` when the backend cannot say (and the cache does not know)."""
        if not valid_id(response_id):
            return None
        known = self._ids.get(response_id)
        if known is not None or self.backend is None:
            return known
        try:
            found = await _in_thread(self.backend.response_origin, response_id)
        except TimeoutError:
            raise StateUnavailable("the state backend did not answer in time") from None
        if found is not None:
            self._put(response_id, found)
        return found

    async def forget(self, response_id: str) -> None:
        self._ids.pop(response_id, None)
        if self.backend is not None:
            with contextlib.suppress(StateUnavailable, TimeoutError):
                await _in_thread(self.backend.forget_response, response_id)

    async def constrain(
        self, endpoint: str, req: dict[str, Any], plan: Plan, state: RouteState
    ) -> tuple[Plan, str | None]:
        """The plan for a request that may depend on server-side state, and the reason it changed."""
        if endpoint != "responses":
            return plan, None
        prev = req.get("previous_response_id")
        if not prev and not req.get("conversation"):
            return plan, None
        origin = None
        if isinstance(prev, str):
            with contextlib.suppress(StateUnavailable):  # unknown then: the baseline answers
                origin = await self.origin(prev)
        if origin is not None and state.candidate is not None and origin.get("upstream") == state.candidate:
            return Plan("candidate"), "stateful:candidate"
        if plan.serve == "baseline" and plan.shadow is None:
            return plan, None
        return Plan("baseline"), "stateful:baseline"


def valid_id(response_id: str) -> bool:
    return _VALID_ID.fullmatch(response_id) is not None


def response_id_in(head: bytes | list[bytes]) -> str | None:
    """The ``resp_...`` id at the start of an answer (a response object or its first events)."""
    if isinstance(head, list):
        head = b"".join(head[:8])
    found = _RESPONSE_ID.search(head[:8192])
    return found[1].decode() if found is not None else None


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` of the backend: inline for the file backend (one small local file, tens of
    microseconds), on `_EXECUTOR` for a database; `TimeoutError` past ``_BACKEND_WAIT_S``."""
    if getattr(getattr(fn, "__self__", None), "kind", None) == "files":
        return fn(*args)
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.run_in_executor(_EXECUTOR, fn, *args), _BACKEND_WAIT_S)
