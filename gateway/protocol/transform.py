"""The candidate's own prompt: a request transform applied to every request the candidate gets.

A prompted baseline sends a long system prompt and few-shot examples; a model fine-tuned on
that traffic does not need them, and sending them anyway throws most of the savings away. A
route's ``candidate_transform`` (settings, or the route state at run time, versioned and
audited with it) says what the candidate is sent instead:

* ``system``: ``keep`` (default), ``drop`` (remove the system/developer messages) or
  ``replace`` (one system message with ``system_prompt`` in their place);
* ``few_shot_turns``: drop the first N user/assistant pairs that follow the system messages
  (the prompt's fixed examples; the conversation after them is kept);
* ``params``: parameters to set (``temperature``, ``max_tokens``, ...), and ``drop_params``:
  parameters to remove.

The same `RequestTransform` is applied by the gateway (shadow, canary and primary alike; the
row keeps the request actually sent, tagged ``transform:<fingerprint>``) and by the trainer when
it builds a dataset, so that the model is trained on exactly what it will be served. The
fingerprint names the transform in dataset manifests; deploying a model trained with another
transform is refused.

Import-light (stdlib only): `trainer` and `evals` import it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SYSTEM_MODES = ("keep", "drop", "replace")
_SYSTEM_ROLES = ("system", "developer")
_FIELDS = ("system", "system_prompt", "few_shot_turns", "params", "drop_params")
_PROTECTED = ("model", "messages", "stream")
TAG_PREFIX = "transform:"


class TransformError(ValueError):
    """A transform spec that cannot be applied."""


@dataclass(frozen=True)
class RequestTransform:
    """A validated candidate request transform (see the module docstring)."""

    system: str = "keep"
    system_prompt: str | None = None
    few_shot_turns: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)
    drop_params: tuple[str, ...] = ()

    @functools.cached_property
    def spec(self) -> dict[str, Any]:
        """The canonical JSON-able spec (defaults left out)."""
        out: dict[str, Any] = {}
        if self.system != "keep":
            out["system"] = self.system
        if self.system_prompt is not None:
            out["system_prompt"] = self.system_prompt
        if self.few_shot_turns:
            out["few_shot_turns"] = self.few_shot_turns
        if self.params:
            out["params"] = dict(sorted(self.params.items()))
        if self.drop_params:
            out["drop_params"] = sorted(self.drop_params)
        return out

    @functools.cached_property
    def fingerprint(self) -> str:
        """``tf_`` and 12 hex digits of the canonical spec's SHA-256: the transform's name."""
        return fingerprint(self.spec) or ""

    def manifest(self) -> dict[str, Any]:
        """What a dataset manifest records of the transform it was built with."""
        return {"fingerprint": self.fingerprint, "spec": self.spec, "describe": self.describe()}

    def describe(self) -> str:
        parts = []
        if self.system == "drop":
            parts.append("drop the system prompt")
        elif self.system == "replace":
            parts.append(f"replace the system prompt ({len(self.system_prompt or '')} chars)")
        if self.few_shot_turns:
            parts.append(f"drop {self.few_shot_turns} few-shot turn(s)")
        if self.params:
            parts.append("set " + ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(self.params.items())))
        if self.drop_params:
            parts.append("remove " + ", ".join(sorted(self.drop_params)))
        return "; ".join(parts) or "no change"

    def apply(self, req: Mapping[str, Any]) -> dict[str, Any]:
        """A new request: ``req`` as the candidate is to be sent it (``req`` is not changed).

        Chat ``messages`` and a Responses ``input`` list get the message rules; a Responses
        ``instructions`` is the system prompt; parameters apply to every endpoint.
        """
        out = dict(req)
        messages = req.get("messages")
        if isinstance(messages, list):
            out["messages"] = self.apply_messages(messages)
        items = req.get("input")
        if isinstance(items, list):
            out["input"] = self.apply_messages(items)
        if "instructions" in req and self.system == "drop":
            out.pop("instructions")
        elif "instructions" in req and self.system == "replace":
            out["instructions"] = self.system_prompt
        for name in self.drop_params:
            out.pop(name, None)
        out.update(self.params)
        return out

    def apply_messages(self, messages: list[Any]) -> list[Any]:
        """The chat messages as the candidate is to be sent them."""
        lead = 0
        while lead < len(messages) and _role(messages[lead]) in _SYSTEM_ROLES:
            lead += 1
        system, rest = messages[:lead], messages[lead:]
        if self.few_shot_turns:
            drop = 0
            for _ in range(self.few_shot_turns):
                pair = rest[drop : drop + 2]
                # never the conversation itself: a pair is dropped only if a user message follows it
                if [_role(m) for m in pair] != ["user", "assistant"] or len(rest) <= drop + 2:
                    break
                drop += 2
            rest = rest[drop:]
        if self.system == "drop":
            system = []
        elif self.system == "replace":
            system = [{"role": "system", "content": self.system_prompt or ""}]
        return [*system, *rest]


def _role(message: object) -> str | None:
    role = message.get("role") if isinstance(message, Mapping) else None
    return role if isinstance(role, str) else None


def fingerprint(spec: Mapping[str, Any] | None) -> str | None:
    """The fingerprint of a canonical spec (None for no transform)."""
    if not spec:
        return None
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "tf_" + hashlib.sha256(text.encode()).hexdigest()[:12]


def parse(spec: Mapping[str, Any] | None) -> RequestTransform | None:
    """Validate a spec (settings, the route state, a dataset manifest); None or ``{}``: no transform.

    Raises:
        TransformError: an unknown field or a value of the wrong kind, with the field named.
    """
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise TransformError("candidate_transform must be an object")
    unknown = sorted(set(spec) - set(_FIELDS))
    if unknown:
        raise TransformError(
            f"candidate_transform: unknown field(s) {', '.join(unknown)} (known: {', '.join(_FIELDS)})"
        )
    system = spec.get("system", "keep")
    if system not in SYSTEM_MODES:
        raise TransformError(f"candidate_transform.system must be one of {', '.join(SYSTEM_MODES)}")
    prompt = spec.get("system_prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise TransformError("candidate_transform.system_prompt must be a string")
    if (system == "replace") != (prompt is not None):
        raise TransformError(
            "candidate_transform: system_prompt goes with system: replace (and only with it)"
        )
    turns = spec.get("few_shot_turns", 0)
    if type(turns) is not int or turns < 0:
        raise TransformError("candidate_transform.few_shot_turns must be a whole number >= 0")
    params = spec.get("params") or {}
    if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
        raise TransformError("candidate_transform.params must be an object of parameters")
    drop = spec.get("drop_params") or []
    if not isinstance(drop, list | tuple) or not all(isinstance(k, str) for k in drop):
        raise TransformError("candidate_transform.drop_params must be a list of parameter names")
    bad = sorted({*params, *drop} & set(_PROTECTED))
    if bad:
        raise TransformError(f"candidate_transform cannot set or remove {', '.join(bad)}")
    both = sorted(set(params) & set(drop))
    if both:
        raise TransformError(f"candidate_transform both sets and removes {', '.join(both)}")
    t = RequestTransform(system, prompt, turns, dict(params), tuple(drop))
    return t if t.spec else None


@functools.lru_cache(maxsize=256)
def _cached(text: str) -> RequestTransform | None:
    return parse(json.loads(text))


def compiled(spec: Mapping[str, Any] | None) -> RequestTransform | None:
    """`parse`, memoised by the spec's JSON text (the request path calls it once per call)."""
    if not spec:
        return None
    return _cached(json.dumps(spec, sort_keys=True))
