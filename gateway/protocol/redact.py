"""Redaction: the one set of patterns, for the call log and for datasets alike.

Two uses, one set of rules:

* **The call log** (``store.redact``: ``emails``, ``cards``, extra ``patterns``). The request
  path does not redact: it writes the record's redaction `log_spec` into the WAL line with
  the raw bodies, and whatever turns WAL lines into rows — the log agent's conversion to
  Parquet, the store's read of the not-yet-converted tail, the telemetry tail when it
  exports content — redacts request, response (a streamed one once assembled, so that a
  pattern may span chunks) and metadata first (`gateway.store.rows.derive`, `for_spec`).
  Raw bodies therefore sit in the WAL until the agent converts them (seconds; WAL files are
  created mode 0600).
* **Datasets** (`trainer._redact`): `redact_secrets` (keys, bearer tokens, private keys)
  and `redact_pii` (secrets, then e-mail addresses, card and phone numbers).

A card number is 13 to 19 digits, single spaces or dashes allowed *between* digits only
(`CARD`): a separator before or after the number is not part of it, and a longer run of
digits is not a card. Import-light: ``re`` only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
CARD = r"\b\d(?:[ -]?\d){12,18}\b"
PHONE = r"(?<!\w)\+?\d{1,3}[ .-]?\(?\d{2,4}\)?[ .-]?\d{3,4}[ .-]?\d{3,4}\b"

Rule = tuple[re.Pattern[str], str]

SECRET_RULES: list[Rule] = [
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
EMAIL_RULE: Rule = (re.compile(EMAIL), "[EMAIL]")
CARD_RULE: Rule = (re.compile(CARD), "[CARD]")
PHONE_RULE: Rule = (re.compile(PHONE), "[PHONE]")


class Redactor:
    """Rules applied in order, each match replaced by its replacement."""

    __slots__ = ("rules",)

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = list(rules)

    def __call__(self, text: str) -> str:
        for rx, repl in self.rules:
            text = rx.sub(repl, text)
        return text

    def text(self, text: str | None) -> str | None:
        """``text`` redacted; None stays None."""
        return None if text is None else self(text)


_SECRETS = Redactor(SECRET_RULES)
_PII = Redactor([*SECRET_RULES, EMAIL_RULE, CARD_RULE, PHONE_RULE])


def redact_secrets(text: str) -> str:
    return _SECRETS(text)


def redact_pii(text: str) -> str:
    return _PII(text)


# -- the call log ----------------------------------------------------------------------------
def log_spec(emails: bool, cards: bool, patterns: Iterable[str]) -> dict[str, Any] | None:
    """What a WAL record carries to say how to redact it (``store.redact``); None when nothing is."""
    patterns = list(patterns)
    if not (emails or cards or patterns):
        return None
    spec = {"emails": bool(emails), "cards": bool(cards), "patterns": patterns}
    for_spec(spec)  # a pattern that does not compile fails here, at startup
    return spec


def log_rules(emails: bool, cards: bool, patterns: Iterable[str]) -> list[Rule]:
    """The call log's rules: extra patterns (``[REDACTED]``), then e-mail addresses, then cards."""
    rules: list[Rule] = [(re.compile(p), "[REDACTED]") for p in patterns]
    if emails:
        rules.append(EMAIL_RULE)
    if cards:
        rules.append(CARD_RULE)
    return rules


_CACHE: dict[tuple[bool, bool, tuple[str, ...]], Redactor] = {}


def for_spec(spec: object) -> Redactor:
    """The redactor of a record's `log_spec` (compiled once per distinct spec).

    Raises `ValueError` for a spec of the wrong shape or a pattern that does not compile.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"a redaction spec is an object, not {type(spec).__name__}")
    patterns = spec.get("patterns") or ()
    if not isinstance(patterns, list | tuple) or not all(isinstance(p, str) for p in patterns):
        raise ValueError("redaction patterns must be a list of strings")
    key = (spec.get("emails") is True, spec.get("cards") is True, tuple(patterns))
    found = _CACHE.get(key)
    if found is None:
        try:
            found = Redactor(log_rules(*key))
        except re.error as exc:
            raise ValueError(f"a redaction pattern does not compile: {exc}") from None
        if len(_CACHE) < 64:
            _CACHE[key] = found
    return found
