"""Feedback validation (pure) and orphan detection over a real log directory."""

from __future__ import annotations

import time

import orjson
import pytest
from pydantic import ValidationError

from gateway.signals.feedback import (
    CustomMetric,
    FeedbackError,
    RateLimiter,
    key_id,
    orphan_feedback,
    poster_id,
    validate_feedback,
)
from gateway.store import LogStore, LogWriter

METRICS = [
    CustomMetric(name="task_completed", type="bool"),
    CustomMetric(name="edit_distance", type="float", higher_is_better=False, min=0, max=1),
]


def check(body, **kw):
    return validate_feedback(body, custom_metrics=METRICS, **kw)


class TestAccepted:
    @pytest.mark.parametrize(
        ("value", "text", "num"),
        [("up", "up", 1.0), ("DOWN", "down", 0.0), (True, "up", 1.0), (False, "down", 0.0)],
    )
    def test_thumbs_are_stored_as_up_or_down_and_one_or_zero(self, value, text, num):
        rec = check({"call_id": "call_1", "kind": "thumbs", "value": value})
        assert (rec["kind"], rec["value"], rec["value_num"]) == ("thumbs", text, num)

    def test_record_has_every_events_column_and_a_sortable_event_id(self):
        rec = check(
            {"call_id": "call_1", "kind": "rating", "value": 4, "comment": "ok", "user": "u1"}, now_us=5
        )
        assert set(rec) == {
            "event_id",
            "call_id",
            "ts",
            "kind",
            "value",
            "value_num",
            "comment",
            "user",
            "source",
            "data",
            "client_key",
            "key_id",
            "reviewer",
        }
        assert rec["event_id"].startswith("evt_") and len(rec["event_id"]) == 30
        assert (rec["ts"], rec["value"], rec["value_num"], rec["comment"], rec["user"], rec["source"]) == (
            5,
            "4",
            4.0,
            "ok",
            "u1",
            "api",
        )

    def test_rating_range_is_configurable_and_inclusive(self):
        assert (
            check({"call_id": "c", "kind": "rating", "value": "10"}, rating_range=(0, 10))["value_num"]
            == 10.0
        )
        assert check({"call_id": "c", "kind": "rating", "value": 2.5})["value"] == "2.5"

    def test_choice_accepts_a_b_or_a_call_id(self):
        assert check({"call_id": "c", "kind": "choice", "value": "B"})["value"] == "b"
        assert check({"call_id": "c", "kind": "choice", "value": "chatcmpl-9x"})["value"] == "chatcmpl-9x"

    def test_flag_takes_an_optional_reason(self):
        assert check({"call_id": "c", "kind": "flag"})["value_num"] == 1.0
        assert check({"call_id": "c", "kind": "flag", "value": "harmful"})["value"] == "harmful"

    def test_custom_metrics_carry_their_direction_in_data(self):
        rec = check({"call_id": "c", "kind": "edit_distance", "value": 0.25})
        assert rec["value_num"] == 0.25
        assert orjson.loads(rec["data"]) == {"metric_type": "float", "higher_is_better": False}
        assert check({"call_id": "c", "kind": "task_completed", "value": "yes"})["value_num"] == 1.0

    def test_authenticated_user_is_used_when_the_body_names_none(self):
        assert check({"call_id": "c", "kind": "flag"}, user="alice")["user"] == "alice"


class TestRejected:
    @pytest.mark.parametrize(
        ("body", "param", "words"),
        [
            ([1, 2], None, "JSON object"),
            ({"kind": "thumbs", "value": "up"}, "call_id", "missing"),
            ({"call_id": "", "kind": "thumbs", "value": "up"}, "call_id", "empty"),
            ({"call_id": 7, "kind": "thumbs", "value": "up"}, "call_id", "string"),
            ({"call_id": "c", "kind": "stars", "value": 1}, "kind", "unknown feedback kind 'stars'"),
            ({"call_id": "c", "kind": "regeneration"}, "kind", "recorded by the gateway"),
            ({"call_id": "c", "kind": "thumbs", "value": "sideways"}, "value", '"up" or "down"'),
            ({"call_id": "c", "kind": "rating", "value": 6}, "value", "out of range [1, 5]"),
            ({"call_id": "c", "kind": "rating", "value": 0}, "value", "out of range"),
            ({"call_id": "c", "kind": "rating", "value": "nan"}, "value", "finite"),
            ({"call_id": "c", "kind": "rating", "value": True}, "value", "boolean"),
            ({"call_id": "c", "kind": "rating"}, "value", "needs a value"),
            ({"call_id": "c", "kind": "choice", "value": "the first one"}, "value", "chosen call"),
            ({"call_id": "c", "kind": "flag", "value": False}, "value", "reason"),
            ({"call_id": "c", "kind": "edit_distance", "value": 1.5}, "value", "above its maximum 1"),
            ({"call_id": "c", "kind": "task_completed", "value": "maybe"}, "value", "boolean metric"),
            ({"call_id": "c", "kind": "thumbs", "value": "up", "score": 1}, "score", "unrecognized"),
            ({"call_id": "c", "kind": "thumbs", "value": "up", "comment": 3}, "comment", "string"),
            ({"call_id": "c", "kind": "thumbs", "value": "up", "data": "x"}, "data", "object"),
        ],
    )
    def test_bad_feedback_raises_with_the_offending_param(self, body, param, words):
        with pytest.raises(FeedbackError) as info:
            check(body)
        assert info.value.param == param
        assert words in info.value.message

    def test_custom_metric_names_may_not_shadow_built_in_kinds(self):
        with pytest.raises(ValidationError):
            CustomMetric(name="thumbs")
        with pytest.raises(ValidationError):
            CustomMetric(name="x", min=2, max=1)


def test_orphan_feedback_reports_only_old_events_matching_no_call(tmp_path):
    log = str(tmp_path / "log")
    now = time.time()
    old, fresh = int((now - 3600) * 1e6), int((now - 5) * 1e6)
    with LogWriter(log) as w:
        w.append(
            "calls",
            {
                "call_id": "call_A",
                "ts": old,
                "route": "r",
                "served": True,
                "response": orjson.dumps({"id": "chatcmpl-A", "choices": []}).decode(),
            },
        )
        for call_id, ts in [("call_A", old), ("chatcmpl-A", old), ("call_gone", old), ("call_late", fresh)]:
            w.append(
                "events", validate_feedback({"call_id": call_id, "kind": "thumbs", "value": "up"}, now_us=ts)
            )
    with LogStore.open(log) as store:
        orphans = orphan_feedback(store, window_s=600, now=now)
    assert [o["call_id"] for o in orphans] == ["call_gone"]
    assert orphans[0]["age_s"] == pytest.approx(3600, abs=1)


class TestPosterAndRateLimit:
    def test_the_poster_is_the_key_then_the_reviewer_then_the_user_then_the_source(self):
        rec = check(
            {"call_id": "c", "kind": "thumbs", "value": "up", "user": "u1"}, client_key="a", key_id="k1"
        )
        assert poster_id(rec) == "key:k1"
        assert poster_id({**rec, "key_id": None, "reviewer": "admin"}) == "reviewer:admin"
        assert poster_id({**rec, "key_id": None}) == "user:u1"
        assert poster_id({**rec, "key_id": None, "user": None}) == "source:api"

    def test_the_key_id_is_a_short_hash_never_the_key(self):
        kid = key_id("sk-st-secret")
        assert len(kid) == 16 and "secret" not in kid and kid == key_id("sk-st-secret")
        assert kid != key_id("sk-st-secret2")

    def test_rate_limiter_allows_a_burst_then_the_rate(self):
        limiter = RateLimiter(60, 3)  # one a second
        assert [limiter.allow("k", now=0.0) for _ in range(3)] == [None, None, None]
        wait = limiter.allow("k", now=0.0)
        assert wait == pytest.approx(1.0)
        assert limiter.allow("other", now=0.0) is None
        assert limiter.allow("k", now=0.5) == pytest.approx(0.5)
        assert limiter.allow("k", now=1.01) is None
        assert RateLimiter(0, 1).allow("k") is None  # 0: no limit
