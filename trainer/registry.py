"""The model registry: one JSON record per model version, next to the log.

::

    <log_dir>/models/<version>/model.json    the `ModelVersion` record
    <log_dir>/models/<version>/adapter/      a LoRA adapter (local training)
    <log_dir>/models/<version>/checkpoints/  training checkpoints (resume)

A version is named ``<name>-v<N>`` (``extract-lora-v3``); ``N`` counts per name and a new
version takes its directory with an atomic ``mkdir``, so two runs never share one. The
record is rewritten atomically (temporary file, then rename) on every change of status;
`Registry.update` does its read-modify-write under the version's lock (``model.json.lock``),
so two processes changing one record (a hosted job's poll, a deploy) never undo each other.
Statuses: ``training`` -> ``ready`` | ``failed``; hosted jobs go ``queued`` -> ``training``
-> ``ready`` | ``failed`` | ``cancelled``. A ``ready`` version that lost its fast eval in a
retraining run becomes ``rejected`` (it is never deployed; `metrics.fast_eval` says why).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from gateway.store.fileio import locked, write_json_atomic
from gateway.store.layout import is_remote, models_root
from trainer.errors import RegistryError

STATUSES = ("queued", "training", "ready", "failed", "cancelled", "rejected")
KINDS = ("lora", "hosted", "external")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,80}$")


@dataclass
class ModelVersion:
    """One fine-tuned (or registered) model."""

    version: str
    kind: str
    """``lora`` (adapter trained here), ``hosted`` (a provider's fine-tuned model) or ``external``."""
    base_model: str
    status: str = "ready"
    adapter_path: str | None = None
    hosted_model: str | None = None
    """The provider's model id, e.g. ``ft:gpt-4o-mini:org::abc``."""
    provider: str | None = None
    provider_base_url: str | None = None
    job_id: str | None = None
    dataset: dict[str, Any] | None = None
    """``{"name", "version", "content_hash"}`` of the training data."""
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    deployments: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    family: str | None = None
    """Model family (``qwen``, ``gpt``...) when known at registration; else inherited from the base model."""
    created_at: str = ""
    updated_at: str = ""

    @property
    def served_model(self) -> str:
        """The model id clients ask for: the hosted id, or the version name for an adapter."""
        return self.hosted_model or self.version

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelVersion:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


class Registry:
    """Model versions stored under ``<log_dir>/models``."""

    def __init__(self, log_dir: str) -> None:
        if is_remote(log_dir):
            raise RegistryError(f"the model registry lives next to a local call log; {log_dir} is remote")
        self.root = models_root(log_dir)

    def path(self, version: str) -> str:
        return os.path.join(self.root, version)

    def allocate(self, name: str) -> str:
        """Reserve the next version ``<name>-v<N>`` (its directory is created)."""
        if not _NAME.match(name):
            raise RegistryError(f"invalid model name {name!r}: use letters, digits, '.', '_' and '-'")
        os.makedirs(self.root, exist_ok=True)
        pattern = re.compile(rf"^{re.escape(name)}-v(\d+)$")
        n = max((int(m.group(1)) for d in os.listdir(self.root) if (m := pattern.match(d))), default=0) + 1
        while True:
            version = f"{name}-v{n}"
            try:
                os.mkdir(self.path(version))
                return version
            except FileExistsError:
                n += 1

    def save(self, mv: ModelVersion) -> ModelVersion:
        """Write a record (creating or replacing it)."""
        if mv.kind not in KINDS:
            raise RegistryError(f"invalid kind {mv.kind!r}: use one of {', '.join(KINDS)}")
        if mv.status not in STATUSES:
            raise RegistryError(f"invalid status {mv.status!r}: use one of {', '.join(STATUSES)}")
        now = _now()
        mv.created_at = mv.created_at or now
        mv.updated_at = now
        write_json_atomic(
            os.path.join(self.path(mv.version), "model.json"), mv.to_dict(), sort_keys=True, default=None
        )
        return mv

    def get(self, version: str) -> ModelVersion:
        try:
            with open(os.path.join(self.path(version), "model.json")) as f:
                data = json.load(f)
            if not isinstance(data, dict):  # `[]`, `null`: an edited file, not a record
                raise TypeError(f"expected a JSON object, got {type(data).__name__}")
            return ModelVersion.from_dict(data)
        except FileNotFoundError:
            raise RegistryError(
                f"no model version {version!r} in {self.root} (see `shadowtune models list`)"
            ) from None
        except (json.JSONDecodeError, TypeError) as exc:
            raise RegistryError(f"the record of {version!r} is unreadable: {exc}") from exc

    def update(
        self, version: str, change: Callable[[ModelVersion], None] | None = None, **changes: Any
    ) -> ModelVersion:
        """Set ``changes`` on the record (and call ``change`` on it), then save it.

        The record is read, changed and written under the version's lock, so concurrent updates
        of one version (other processes too) are applied one after the other, none lost. A change
        that depends on the record (append to ``deployments``, merge into ``metrics``) must be
        the ``change`` function, which sees the freshly read record, not a copy read earlier.
        """
        self.get(version)  # a missing version is an error, before its folder gets a lock file
        with locked(os.path.join(self.path(version), "model.json.lock"), mode=0o644):
            mv = self.get(version)
            for key, value in changes.items():
                if not hasattr(mv, key):
                    raise RegistryError(f"unknown model field {key!r}")
                setattr(mv, key, value)
            if change is not None:
                change(mv)
            return self.save(mv)

    def list(self) -> list[ModelVersion]:
        """Every version with a record, oldest first."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        out = [self.get(n) for n in names if os.path.exists(os.path.join(self.root, n, "model.json"))]
        return sorted(out, key=lambda m: (m.created_at, m.version))

    def families(self, known: Mapping[str, str]) -> dict[str, str]:
        """Each version's name and served model id -> its family, along the lineage.

        A version's own ``family`` when recorded, else its base model's: ``known[base_model]``
        (e.g. upstream ``family`` settings), or the family of the registered version it was
        trained from. A version whose lineage reaches no known family is left out (unknown).
        """
        versions = self.list()
        by_name: dict[str, ModelVersion] = {}
        for mv in versions:
            by_name.setdefault(mv.served_model, mv)
            by_name[mv.version] = mv

        def family(mv: ModelVersion, seen: frozenset[str]) -> str | None:
            if mv.family:
                return mv.family
            if mv.base_model in known:
                return known[mv.base_model]
            parent = by_name.get(mv.base_model)
            if parent is None or parent.version in seen:
                return None
            return family(parent, seen | {parent.version})

        out: dict[str, str] = {}
        for mv in versions:
            fam = family(mv, frozenset({mv.version}))
            if fam:
                out[mv.version] = fam
                out[mv.served_model] = fam
        return out

    def register(
        self,
        name: str,
        *,
        base_model: str,
        kind: str = "external",
        adapter_path: str | None = None,
        hosted_model: str | None = None,
        provider: str | None = None,
        dataset: dict[str, Any] | None = None,
        hyperparameters: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        status: str = "ready",
        family: str | None = None,
    ) -> ModelVersion:
        """Record a model trained elsewhere (an adapter directory or a provider's model id)."""
        if adapter_path is None and hosted_model is None:
            raise RegistryError("register needs an adapter path or a hosted model id")
        if adapter_path is not None and not os.path.isdir(adapter_path):
            raise RegistryError(f"no adapter directory at {adapter_path}")
        version = self.allocate(name)
        return self.save(
            ModelVersion(
                version=version,
                kind=kind,
                base_model=base_model,
                status=status,
                adapter_path=os.path.abspath(adapter_path) if adapter_path else None,
                hosted_model=hosted_model,
                provider=provider,
                dataset=dataset,
                hyperparameters=hyperparameters or {},
                metrics=metrics or {},
                family=family,
            )
        )
