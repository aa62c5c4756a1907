"""Dataset versions on disk: the example and preference records, reading and writing a version.

This is THE reader of trainer datasets (`load_dataset`, `DatasetVersion.examples`): the evals
(`evals.golden.sets`) read examples, and their labels (``completion``), through it.
A version directory is written in full under a temporary name and renamed into place, so a
reader never sees half a version, and two builds never take the same number.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gateway.store.layout import datasets_root as datasets_root  # where versions live: the store's layout
from trainer.errors import DatasetError
from trainer.split import input_hash, input_key

MANIFEST_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

EXAMPLES_SCHEMA = pa.schema(
    [
        pa.field("example_id", pa.string(), nullable=False),
        pa.field("call_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC")),
        pa.field("split", pa.string(), nullable=False),
        pa.field("input_hash", pa.string(), nullable=False),
        pa.field("messages", pa.string(), nullable=False),  # JSON list of the request's messages
        pa.field("tools", pa.string()),  # JSON list, or NULL
        pa.field("completion", pa.string(), nullable=False),  # JSON assistant message: the label
        pa.field("label_source", pa.string(), nullable=False),  # served | relabel
    ]
)
PREFERENCES_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("call_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("input_hash", pa.string(), nullable=False),
        pa.field("messages", pa.string(), nullable=False),
        pa.field("tools", pa.string()),
        pa.field("chosen", pa.string(), nullable=False),  # JSON assistant message
        pa.field("rejected", pa.string(), nullable=False),  # JSON assistant message
        pa.field("source", pa.string(), nullable=False),  # relabel | regeneration | choice
    ]
)


@dataclass(frozen=True)
class Example:
    """One supervised example: the request's messages (and tools) and the assistant message to learn."""

    example_id: str
    call_id: str
    split: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    completion: dict[str, Any]
    label_source: str
    input_hash: str
    ts: dt.datetime | None = None

    @property
    def answer(self) -> str:
        """The label's text (empty for a tool-call-only answer)."""
        return str(self.completion.get("content") or "")


@dataclass(frozen=True)
class PreferencePair:
    """An input with a preferred and a rejected assistant message."""

    pair_id: str
    call_id: str
    split: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    chosen: dict[str, Any]
    rejected: dict[str, Any]
    source: str


@dataclass(frozen=True)
class DatasetVersion:
    """A built dataset version on disk."""

    name: str
    version: int
    path: str
    manifest: dict[str, Any] = field(repr=False)

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    @property
    def splits(self) -> dict[str, int]:
        return dict(self.manifest["splits"])

    def examples(self, split: str | None = None) -> list[Example]:
        """The examples, optionally of one split, in a stable order."""
        table = pq.read_table(os.path.join(self.path, "examples.parquet"))
        out = []
        for r in table.to_pylist():
            if split is not None and r["split"] != split:
                continue
            out.append(
                Example(
                    example_id=r["example_id"],
                    call_id=r["call_id"],
                    split=r["split"],
                    messages=json.loads(r["messages"]),
                    tools=json.loads(r["tools"]) if r["tools"] else None,
                    completion=json.loads(r["completion"]),
                    label_source=r["label_source"],
                    input_hash=r["input_hash"],
                    ts=r["ts"],
                )
            )
        return out

    def preferences(self, split: str | None = None) -> list[PreferencePair]:
        """The preference pairs, optionally of one split."""
        path = os.path.join(self.path, "preferences.parquet")
        out = []
        for r in pq.read_table(path).to_pylist():
            if split is not None and r["split"] != split:
                continue
            out.append(
                PreferencePair(
                    pair_id=r["pair_id"],
                    call_id=r["call_id"],
                    split=r["split"],
                    messages=json.loads(r["messages"]),
                    tools=json.loads(r["tools"]) if r["tools"] else None,
                    chosen=json.loads(r["chosen"]),
                    rejected=json.loads(r["rejected"]),
                    source=r["source"],
                )
            )
        return out


# -- names and versions ------------------------------------------------------------------------
def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise DatasetError(f"invalid dataset name {name!r}: use letters, digits, '.', '_' and '-'")


def _versions(log_dir: str, name: str) -> list[int]:
    folder = os.path.join(datasets_root(log_dir), name)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(int(n[1:]) for n in names if n.startswith("v") and n[1:].isdigit())


def load_dataset(log_dir: str, name: str, version: int | None = None) -> DatasetVersion:
    """A dataset version (the latest when ``version`` is None); `DatasetError` when there is none.

    ``name`` may also be written ``name@v3``.
    """
    if "@" in name and version is None:
        name, _, v = name.partition("@")
        version = int(v.lstrip("v")) if v.lstrip("v").isdigit() else None
        if version is None:
            raise DatasetError(f"invalid dataset version in {name}@{v}: use NAME@vN")
    _check_name(name)
    versions = _versions(log_dir, name)
    if not versions:
        raise DatasetError(
            f"no dataset named {name!r} under {datasets_root(log_dir)} (run `shadowtune dataset build`)"
        )
    if version is None:
        version = versions[-1]
    elif version not in versions:
        raise DatasetError(
            f"dataset {name!r} has no version v{version} (versions: {', '.join(f'v{v}' for v in versions)})"
        )
    path = os.path.join(datasets_root(log_dir), name, f"v{version}")
    with open(os.path.join(path, "manifest.json")) as f:
        manifest = json.load(f)
    return DatasetVersion(name=name, version=version, path=path, manifest=manifest)


def list_datasets(log_dir: str) -> list[DatasetVersion]:
    """Every version of every dataset, by name then version."""
    root = datasets_root(log_dir)
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    return [load_dataset(log_dir, n, v) for n in names if _NAME.match(n) for v in _versions(log_dir, n)]


def _hash_of(p: PreferencePair) -> str:
    return input_hash(input_key(p.messages, p.tools))


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _write_version(
    log_dir: str, name: str, examples: list[Example], pairs: list[PreferencePair], manifest: dict[str, Any]
) -> DatasetVersion:
    ex_rows: list[dict[str, Any]] = [
        {
            "example_id": e.example_id,
            "call_id": e.call_id,
            "ts": e.ts,
            "split": e.split,
            "input_hash": e.input_hash,
            "messages": _dumps(e.messages),
            "tools": _dumps(e.tools) if e.tools else None,
            "completion": _dumps(e.completion),
            "label_source": e.label_source,
        }
        for e in examples
    ]
    pair_rows: list[dict[str, Any]] = [
        {
            "pair_id": p.pair_id,
            "call_id": p.call_id,
            "split": p.split,
            "input_hash": _hash_of(p),
            "messages": _dumps(p.messages),
            "tools": _dumps(p.tools) if p.tools else None,
            "chosen": _dumps(p.chosen),
            "rejected": _dumps(p.rejected),
            "source": p.source,
        }
        for p in pairs
    ]
    digest = hashlib.sha256()
    for r in ex_rows:
        digest.update(_dumps({k: v for k, v in r.items() if k != "ts"}).encode() + b"\n")
    for r in pair_rows:
        digest.update(_dumps(r).encode() + b"\n")
    manifest["content_hash"] = "sha256:" + digest.hexdigest()
    folder = os.path.join(datasets_root(log_dir), name)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{secrets.token_hex(6)}")
    os.makedirs(tmp)
    try:
        pq.write_table(
            pa.Table.from_pylist(ex_rows, schema=EXAMPLES_SCHEMA), os.path.join(tmp, "examples.parquet")
        )
        pq.write_table(
            pa.Table.from_pylist(pair_rows, schema=PREFERENCES_SCHEMA),
            os.path.join(tmp, "preferences.parquet"),
        )
        version = (_versions(log_dir, name) or [0])[-1] + 1
        while True:
            manifest["version"] = version
            with open(os.path.join(tmp, "manifest.json"), "w") as f:
                json.dump(manifest, f, indent=2, sort_keys=True)
            final = os.path.join(folder, f"v{version}")
            try:
                os.rename(tmp, final)  # fails when another build took this number first
                break
            except OSError:
                if not os.path.exists(final):
                    raise
                version += 1
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return DatasetVersion(name=name, version=version, path=final, manifest=manifest)
