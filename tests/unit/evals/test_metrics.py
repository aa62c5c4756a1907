"""Deterministic metrics on examples whose scores are known by hand."""

from __future__ import annotations

import json
import sys
import types

import pytest

from evals.errors import MetricError
from evals.golden.metrics import (
    accuracy,
    classification,
    compute_metrics,
    exact_match,
    field_counts,
    json_fields,
    json_valid,
    load_metric,
    macro_f1,
    parse_json,
)
from evals.online.outcomes import wilson_interval


def test_exact_match_ignores_case_and_whitespace_unless_told_not_to():
    assert exact_match("  Paris\n", "paris")
    assert not exact_match("Paris", "paris", normalize=False)
    assert not exact_match(None, "x") and not exact_match("x", None)
    assert compute_metrics(["exact_match"], ["a", "B ", "c", "d"], ["a", "b", "x", None]) == {
        "exact_match": {"exact_match": pytest.approx(2 / 3)}
    }


def test_json_validity_accepts_code_fences():
    assert json_valid('{"a": 1}') and json_valid('```json\n{"a": 1}\n```') and json_valid("[1, 2]")
    assert not json_valid("{a: 1}") and not json_valid(None) and not json_valid("")
    assert parse_json('```\n{"a": [1]}\n```') == (True, {"a": [1]})


def test_field_level_precision_recall_f1_on_a_known_example():
    ref = {"name": "Ann", "total": 12.5, "address": {"city": "Paris", "zip": "75001"}, "tags": ["a", "b"]}
    pred = {"name": "ann ", "total": 12.50, "address": {"city": "Lyon"}, "tags": ["b", "c"], "extra": 1}
    counts = field_counts(pred, ref)
    assert (counts["name"].tp, counts["total"].tp) == (1, 1)
    assert (counts["address.city"].fp, counts["address.city"].fn) == (1, 1)
    assert (counts["address.zip"].fn, counts["extra"].fp) == (1, 1)
    assert (counts["tags[]"].tp, counts["tags[]"].fp, counts["tags[]"].fn) == (1, 1, 1)
    # tp 3 (name, total, tags b); fp 3 (city, tag c, extra); fn 3 (city, zip, tag a)
    scores = json_fields([json.dumps(pred)], [json.dumps(ref)])
    assert scores["precision"] == pytest.approx(0.5)
    assert scores["recall"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx(0.5)
    assert scores["f1.name"] == 1.0 and scores["f1.address.zip"] == 0.0


def test_an_invalid_json_prediction_misses_every_field():
    scores = json_fields(["not json", '{"a": 1, "b": 2}'], ['{"a": 1, "b": 2}', '{"a": 1, "b": 2}'])
    assert scores["precision"] == 1.0 and scores["recall"] == 0.5


def test_classification_accuracy_and_macro_f1():
    pred = ["spam", "spam", "ham", "ham", "ham", "eggs"]
    true = ["spam", "ham", "ham", "ham", "spam", "eggs"]
    assert accuracy(pred, true) == pytest.approx(4 / 6)
    # spam: tp1 fp1 fn1 -> 0.5; ham: tp2 fp1 fn1 -> 2/3; eggs: 1.0
    assert macro_f1(pred, true) == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert classification(["Spam.", "HAM"], ["spam", "ham"]) == {"accuracy": 1.0, "macro_f1": 1.0}


def test_a_user_metric_is_loaded_from_module_and_function(monkeypatch):
    mod = types.ModuleType("my_metrics")
    mod.starts_right = lambda pred, ref, ex: pred.startswith(ref[0])
    mod.lengths = lambda pred, ref, ex: {"len": len(pred), "id_len": len(ex.get("id", ""))}
    mod.broken = lambda pred, ref, ex: "nope"
    monkeypatch.setitem(sys.modules, "my_metrics", mod)
    assert load_metric("my_metrics:starts_right")(["abc", "xyz"], ["a", "a"], []) == {"starts_right": 0.5}
    assert load_metric("my_metrics:lengths")(["ab", "abcd"], [None, None], [{"id": "x"}, {"id": "yy"}]) == {
        "len": 3.0,
        "id_len": 1.5,
    }
    with pytest.raises(MetricError, match="returned str"):
        load_metric("my_metrics:broken")(["a"], ["a"], [])
    with pytest.raises(MetricError, match="cannot load metric"):
        load_metric("my_metrics:missing")
    with pytest.raises(MetricError, match="unknown metric"):
        load_metric("bleu")


def test_wilson_interval_matches_known_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == pytest.approx(1.0)
