"""Diffs of two answers for the compare view: word by word, and field by field for JSON.

`word_diff` splits both texts into words and the whitespace between them and returns
``(op, text)`` segments (``same``, ``del`` -- only in the first, ``add`` -- only in the
second). `json_diff` parses both as JSON (a structured answer: an object or an array) and
compares them by path (``$.date``, ``$.items[0].name``): each row is ``(path, op, a, b)``
with ``op`` one of ``same``, ``changed``, ``added``, ``removed``; None when either is not
JSON. Pure functions; the template escapes.
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Any

_TOKENS = re.compile(r"\s+|[^\s]+")
MAX_TOKENS = 20_000
MAX_ROWS = 500


def word_diff(a: str, b: str) -> list[tuple[str, str]]:
    ta, tb = _TOKENS.findall(a)[:MAX_TOKENS], _TOKENS.findall(b)[:MAX_TOKENS]
    out: list[tuple[str, str]] = []
    sm = difflib.SequenceMatcher(None, ta, tb, autojunk=False)
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            _push(out, "same", "".join(ta[i1:i2]))
        else:
            if i2 > i1:
                _push(out, "del", "".join(ta[i1:i2]))
            if j2 > j1:
                _push(out, "add", "".join(tb[j1:j2]))
    return out


def _push(out: list[tuple[str, str]], op: str, text: str) -> None:
    if out and out[-1][0] == op:
        out[-1] = (op, out[-1][1] + text)
    else:
        out.append((op, text))


def _parse(text: str) -> Any:
    s = text.strip()
    if s.startswith("```"):  # a fenced block: ```json ... ```
        s = s.strip("`")
        s = (s[4:] if s.startswith("json") else s).strip()
    if not s or s[0] not in "{[":
        return None
    try:
        return json.loads(s)
    except ValueError:
        return None


def _flatten(value: Any, path: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            key = k if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) else json.dumps(k)
            _flatten(v, f"{path}.{key}" if key[0] != '"' else f"{path}[{key}]", out)
    elif isinstance(value, list) and value:
        for i, v in enumerate(value):
            _flatten(v, f"{path}[{i}]", out)
    else:
        out[path] = value


def json_diff(a: str, b: str) -> list[tuple[str, str, str, str]] | None:
    pa, pb = _parse(a), _parse(b)
    if pa is None or pb is None:
        return None
    fa: dict[str, Any] = {}
    fb: dict[str, Any] = {}
    _flatten(pa, "$", fa)
    _flatten(pb, "$", fb)
    rows = []
    for path in list(fa) + [p for p in fb if p not in fa]:
        va, vb = fa.get(path, _MISSING), fb.get(path, _MISSING)
        if va is _MISSING:
            rows.append((path, "added", "", _show(vb)))
        elif vb is _MISSING:
            rows.append((path, "removed", _show(va), ""))
        elif va == vb and type(va) is type(vb):
            rows.append((path, "same", _show(va), _show(vb)))
        else:
            rows.append((path, "changed", _show(va), _show(vb)))
    return rows[:MAX_ROWS]


_MISSING = object()


def _show(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False)
