"""Which candidate request transform a dataset is built with (`gateway.protocol.transform`).

``dataset build --transform``:

* ``auto`` (the default with ``--route``): the route's live ``candidate_transform`` from the
  state backend the gateway reads (the route state wins once an operator changed it), else the
  route's entry in the settings (``--config`` / ``$SHADOWTUNE_CONFIG``), else none;
* ``none``: the requests as the application sent them;
* a file (JSON or YAML) holding a transform spec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gateway.protocol.transform import TransformError, parse
from trainer.errors import DatasetError


def route_transform(
    choice: str, route: str | None, *, log_dir: str, config: str | None = None
) -> tuple[dict[str, Any] | None, str]:
    """``(canonical spec or None, where it came from)`` for ``choice`` (see the module docstring)."""
    if choice == "none" or (choice == "auto" and route is None):
        return None, "none"
    if choice != "auto":
        return _from_file(choice), f"file {choice}"
    stored = _from_state(route or "", log_dir, config)
    if stored is not None:
        return stored
    from gateway.config import Settings

    try:
        rc = Settings.load(config, store__log_dir=log_dir).routes.get(route or "")
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read the settings for the route's transform: {exc}") from exc
    if rc is None or rc.candidate_transform is None:
        return None, "none (the route has no candidate_transform)"
    return rc.candidate_transform.spec(), "settings"


def _from_file(path: str) -> dict[str, Any] | None:
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        t = parse(raw)
    except (OSError, yaml.YAMLError, TransformError) as exc:
        raise DatasetError(f"--transform {path}: {exc}") from exc
    return t.spec if t is not None else None


def _from_state(route: str, log_dir: str, config: str | None) -> tuple[dict[str, Any] | None, str] | None:
    from gateway.admin_client import TargetError, find_target
    from gateway.state import open_backend
    from gateway.state.base import StateUnavailable

    try:
        target = find_target(config, log_dir=log_dir)
        found = open_backend(target.state).routes_if_newer(-1)
    except (TargetError, StateUnavailable, OSError):
        return None
    if found is None:
        return None
    version, doc = found
    state = (doc.get("routes") or {}).get(route)
    if state is None:
        return None
    t = parse(state.get("candidate_transform"))
    return (t.spec if t is not None else None), f"route state v{version}"
