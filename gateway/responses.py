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
* it is served by the variant that produced the id when this worker saw it being served by
  the candidate (`ResponseOrigins`, bounded, per worker), else by the baseline only — the
  canary hash is not consulted, since a share change could move the conversation;
* the row gets the tag ``stateful:baseline`` or ``stateful:candidate`` (the reason), and the
  skipped shadow is counted under that reason in the shadow metrics.

So the candidate sees self-contained Responses requests (``store: false`` with the history
in ``input``, or first turns). Limits: with several workers or replicas a candidate's id is
only known to the worker that served it (a continuation elsewhere goes to the baseline), and
routes with ``store_bodies: false`` keep no answer to learn ids from.
"""

from __future__ import annotations

import collections
import re
from typing import TYPE_CHECKING, Any

from gateway.errors import InvalidRequest
from gateway.routing.modes import Plan

if TYPE_CHECKING:
    from gateway.protocol.record import CallRecord

PATHS = {
    "/v1/responses": "responses",
    "/responses": "responses",
    "/v1/completions": "completions",
    "/completions": "completions",
}
UPSTREAM_PATH = {"responses": "/responses", "completions": "/completions"}
STREAMING = frozenset({"chat.completions", "responses", "completions"})

_RESPONSE_ID = re.compile(r'"id"\s*:\s*"(resp_[^"\\]{1,200})"')


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
    """Response ids this worker saw the candidate serve (bounded, least recently noted out first)."""

    def __init__(self, size: int = 50_000) -> None:
        self.size = size
        self._ids: collections.OrderedDict[str, str] = collections.OrderedDict()

    def note(self, rec: CallRecord) -> None:
        """Remember the id of a Responses answer the candidate served (called after every call)."""
        if rec.endpoint != "responses" or rec.variant != "candidate" or rec.status != 200:
            return
        body = rec.response or rec.response_sse or ""
        found = _RESPONSE_ID.search(body[:4096])
        if found is None:
            return
        self._ids[found[1]] = "candidate"
        self._ids.move_to_end(found[1])
        while len(self._ids) > self.size:
            self._ids.popitem(last=False)

    def variant_of(self, response_id: str) -> str | None:
        return self._ids.get(response_id)


def constrain(
    endpoint: str, req: dict[str, Any], plan: Plan, origins: ResponseOrigins
) -> tuple[Plan, str | None]:
    """The plan for a request that may depend on server-side state, and the reason it changed."""
    if endpoint != "responses":
        return plan, None
    prev = req.get("previous_response_id")
    if not prev and not req.get("conversation"):
        return plan, None
    if isinstance(prev, str) and origins.variant_of(prev) == "candidate":
        return Plan("candidate"), "stateful:candidate"
    if plan.serve == "baseline" and plan.shadow is None:
        return plan, None
    return Plan("baseline"), "stateful:baseline"
