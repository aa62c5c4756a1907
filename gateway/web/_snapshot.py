"""The review pages' last computed aggregates, kept next to the log so a restart starts warm.

A cold dashboard over a week of 10M calls costs a minute of queries (`gateway.web._series`);
`gateway.web._store.Cached` computes it in the background. `Snapshots` writes each computed
value to ``<log_dir>/review/<name>.json`` (`gateway.store.layout.review_snapshot_path`, in the
log's own filesystem: object storage too) and reads it back when a process has none in
memory, so after a restart the page shows the last numbers at once -- with their age, as it
does for any value being recomputed -- while the new ones are computed. The numbers are the
same query's, only older; a snapshot of other inputs (another key) is ignored.

The file is JSON with tags for what JSON lacks (tuples, dicts with non-string keys, the
dashboard's `ArmRate`): a file in the log directory is data, never code (no pickle).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Hashable
from typing import Any

from gateway.store import layout
from gateway.store.fileio import write_atomic
from gateway.store.outcomes import ArmRate

log = logging.getLogger(__name__)

VERSION = 1
"""Bumped when the shape of a snapshot changes: older files are then ignored."""


def encode(value: Any) -> Any:
    """``value`` as plain JSON data (tagged where JSON has no type for it)."""
    if isinstance(value, ArmRate):
        return {"~arm": [encode(getattr(value, f)) for f in ArmRate.__dataclass_fields__]}
    if isinstance(value, tuple):
        return {"~tuple": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("~") for k in value):
            return {k: encode(v) for k, v in value.items()}
        return {"~dict": [[encode(k), encode(v)] for k, v in value.items()]}
    if isinstance(value, float) and not math.isfinite(value):
        return {"~float": repr(value)}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"cannot keep a {type(value).__name__} in a review snapshot")


def decode(data: Any) -> Any:
    """The inverse of `encode`."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if isinstance(data, dict):
        if len(data) == 1:
            (tag, inner), *_ = data.items()
            if tag == "~arm":
                return ArmRate(*(decode(v) for v in inner))
            if tag == "~tuple":
                return tuple(decode(v) for v in inner)
            if tag == "~dict":
                return {_hashable(decode(k)): decode(v) for k, v in inner}
            if tag == "~float":
                return float(inner)
        return {k: decode(v) for k, v in data.items()}
    return data


def _hashable(key: Any) -> Hashable:
    if not isinstance(key, Hashable):
        raise ValueError("a review snapshot's key is not hashable")
    return key


class Snapshots:
    """Computed values by cache key, in files next to the log."""

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir

    def _path(self, key: Hashable) -> tuple[str, str]:
        text = repr(key)
        name = str(key[0]) if isinstance(key, tuple) and key else "value"
        slug = "".join(ch if ch.isalnum() else "-" for ch in name)[:40]
        return layout.review_snapshot_path(
            self.log_dir, f"{slug}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
        ), text

    def load(self, key: Hashable) -> tuple[Any, float] | None:
        """``(value, computed_at)`` of the last snapshot of ``key``; None when there is none (or
        it cannot be read: a snapshot is only ever a head start)."""
        path, text = self._path(key)
        fs, _ = layout.filesystem(self.log_dir)
        try:
            with fs.open_input_stream(path) as f:
                doc = json.loads(f.read())
            if doc.get("version") != VERSION or doc.get("key") != text:
                return None
            return decode(doc["value"]), float(doc["computed_at"])
        except (FileNotFoundError, OSError, ValueError, KeyError, TypeError) as exc:
            if not isinstance(exc, FileNotFoundError):
                log.warning("review snapshot %s not used: %s", path, exc)
            return None

    def save(self, key: Hashable, value: Any, computed_at: float) -> None:
        """Keep ``value``; a failure is logged, never raised (the page has its value anyway)."""
        path, text = self._path(key)
        try:
            body = json.dumps(
                {"version": VERSION, "key": text, "computed_at": computed_at, "value": encode(value)}
            )
            fs, _ = layout.filesystem(self.log_dir)
            if layout.is_remote(self.log_dir):
                with fs.open_output_stream(path) as out:  # an object appears whole when closed
                    out.write(body.encode())
            else:
                fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
                write_atomic(path, body, sync=False)
        except (OSError, TypeError, ValueError) as exc:
            log.warning("review snapshot %s not written: %s", path, exc)
