"""Redaction of dataset text before it is written: a hook, with two built-in redactors.

A redactor is any ``Callable[[str], str]``; it is applied to every message's text and to
the label. Built in: ``secrets`` (API keys, bearer tokens, private keys: the default) and
``pii`` (secrets plus e-mail addresses, phone and card numbers). ``none`` keeps text as is,
and ``package.module:function`` imports a redactor of your own.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

Redactor = Callable[[str], str]

_SECRETS = [
    (
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
        "[PRIVATE_KEY]",
    ),
    (re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{20,}"), "[API_KEY]"),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"), "[API_KEY]"),
    (re.compile(r"\bxox[abpr]-[A-Za-z0-9-]{10,}"), "[API_KEY]"),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), "[API_KEY]"),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{16,}"), "Bearer [TOKEN]"),
    (
        re.compile(r"(?i)\b(api[_-]?key|secret|password|token)(\s*[:=]\s*)['\"]?[^\s'\",;]{6,}"),
        r"\1\2[REDACTED]",
    ),
]
_PII = [
    (re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"), "[EMAIL]"),
    (re.compile(r"\b(?:\d[ -]?){13,19}\b"), "[CARD_NUMBER]"),
    (re.compile(r"(?<!\w)\+?\d{1,3}[ .-]?\(?\d{2,4}\)?[ .-]?\d{3,4}[ .-]?\d{3,4}\b"), "[PHONE]"),
]


def redact_secrets(text: str) -> str:
    for pattern, repl in _SECRETS:
        text = pattern.sub(repl, text)
    return text


def redact_pii(text: str) -> str:
    text = redact_secrets(text)
    for pattern, repl in _PII:
        text = pattern.sub(repl, text)
    return text


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
