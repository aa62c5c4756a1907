"""Redaction of dataset text before it is written: a hook, with two built-in redactors.

A redactor is any ``Callable[[str], str]``; it is applied to every message's text and to
the label. Built in: ``secrets`` (API keys, bearer tokens, private keys: the default) and
``pii`` (secrets plus e-mail addresses, phone and card numbers), both from
`gateway.protocol.redact`, whose patterns the call log's redaction uses too. ``none`` keeps
text as is, and ``package.module:function`` imports a redactor of your own.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from gateway.protocol.redact import redact_pii, redact_secrets

Redactor = Callable[[str], str]


def _identity(text: str) -> str:
    return text


BUILTIN: dict[str, Redactor] = {"none": _identity, "secrets": redact_secrets, "pii": redact_pii}


def resolve_redactor(spec: str | Redactor | None) -> Redactor:
    """A redactor from a built-in name, a ``module:function`` path, a callable or None (no redaction)."""
    if spec is None:
        return _identity
    if callable(spec):
        return spec
    if spec in BUILTIN:
        return BUILTIN[spec]
    module, sep, attr = spec.partition(":")
    if not sep:
        raise ValueError(f"unknown redactor {spec!r}: use none, secrets, pii or package.module:function")
    fn = getattr(importlib.import_module(module), attr, None)
    if not callable(fn):
        raise ValueError(f"{spec} is not a callable redactor")
    return fn  # type: ignore[no-any-return]
