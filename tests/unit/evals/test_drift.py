"""Drift checks on generated traffic: shifts are found and explained, no-shift stays quiet."""

from __future__ import annotations

import json
import time

import pytest
from evals_traffic import traffic

from evals.drift import (
    DriftConfig,
    Sample,
    check_drift,
    detect_language,
    drift_scores,
    latest_year,
    load_reports,
    parse_duration,
    save_report,
)
from evals.errors import DriftError

CONFIG = DriftConfig(alpha=0.05, calibration_rounds=79, max_reference=300, max_current=150)


def samples(texts, **kw):
    return [Sample(t, **kw) for t in texts]


def current_tokens(report):
    return [t["token"] for t in report.check("domain_classifier").details["top_current_tokens"]]


def test_a_year_shift_from_2023_to_2024_is_detected_and_explained():
    report = check_drift(samples(traffic(300, seed=1)), samples(traffic(150, seed=2, year=2024)), CONFIG)
    assert report.drifted
    clf = report.check("domain_classifier")
    assert clf.drifted and clf.statistic > clf.threshold
    assert "2024" in current_tokens(report)[:3]
    years = report.check("years")
    assert years.drifted and years.details["over_represented"] == "2024"
    assert all("2024" in e for e in years.examples) and years.examples
    assert not report.check("prompt_length").drifted
    assert not report.check("language").drifted


def test_a_new_topic_is_detected_and_its_words_named():
    report = check_drift(
        samples(traffic(300, seed=3)), samples(traffic(150, seed=4, new_topic_share=0.3)), CONFIG
    )
    clf = report.check("domain_classifier")
    assert report.drifted and clf.drifted
    assert {"bitcoin", "wallet", "blockchain"} & set(current_tokens(report)[:5])
    assert any(w in clf.examples[0] for w in ("bitcoin", "wallet", "blockchain"))
    assert not report.check("years").drifted


def test_unshifted_traffic_keeps_the_false_alarm_rate_at_or_below_alpha():
    alpha = CONFIG.alpha
    started = time.perf_counter()
    alarms = per_check = 0
    runs = 0
    for ref_seed in range(3):
        reference = samples(traffic(300, seed=1000 + ref_seed))
        for cur_seed in range(30):
            report = check_drift(
                reference, samples(traffic(150, seed=5000 + 100 * ref_seed + cur_seed)), CONFIG
            )
            runs += 1
            alarms += report.drifted
            per_check += report.check("domain_classifier").drifted
    rate = alarms / runs
    print(
        f"\nfalse alarm rate over {runs} unshifted samples: {rate:.3f} (alpha {alpha}); "
        f"classifier alone {per_check / runs:.3f} (level {alpha / 2}); {time.perf_counter() - started:.1f}s"
    )
    assert rate <= alpha


def test_tool_use_and_language_shifts_are_found_by_their_feature_tests():
    ref = samples(traffic(200, seed=5)) + samples(traffic(100, seed=6), tools=True)
    cur_texts = traffic(60, seed=7) + [
        "Hola, ¿cómo está mi pedido? Es para la oficina y no llega." for _ in range(60)
    ]
    cur = samples(cur_texts[:40], tools=True) + samples(cur_texts[40:])
    report = check_drift(ref, cur, CONFIG)
    lang = report.check("language")
    assert lang.drifted and lang.details["over_represented"] == "es"
    assert lang.details["shares"]["es"]["current"] == pytest.approx(0.5)


def test_structured_output_fields_are_compared_per_field():
    ref = [
        Sample(t, output=json.dumps({"status": "open", "priority": i % 3}))
        for i, t in enumerate(traffic(200, seed=8))
    ]
    cur = [
        Sample(t, output=json.dumps({"status": "closed" if i % 2 else "open", "priority": i % 3}))
        for i, t in enumerate(traffic(100, seed=9))
    ]
    report = check_drift(ref, cur, CONFIG)
    assert report.check("output.status").drifted
    assert report.check("output.status").details["over_represented"] == "closed"
    assert not report.check("output.priority").drifted


def test_too_little_traffic_is_an_error_not_a_verdict():
    with pytest.raises(DriftError, match="too little traffic"):
        check_drift(samples(traffic(20, seed=1)), samples(traffic(10, seed=2)), CONFIG)


def test_reports_are_stored_and_flatten_to_scores(tmp_path):
    report = check_drift(
        samples(traffic(300, seed=1)), samples(traffic(150, seed=2, year=2024)), CONFIG, route="support"
    )
    path = save_report(str(tmp_path), report)
    assert path.parent == tmp_path / "drift" / "support"
    stored = load_reports(str(tmp_path), "support")
    assert [r["report_id"] for r in stored] == [report.report_id]
    scores = drift_scores(stored[0])
    assert scores["drift.detected"] == 1.0
    assert scores["drift.domain_classifier.statistic"] == pytest.approx(
        report.check("domain_classifier").statistic
    )
    assert scores["drift.years.drifted"] == 1.0
    assert all(isinstance(v, float) for v in scores.values())


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("Please help me with the invoice for this month", "en"),
        ("¿Cómo puedo cambiar la contraseña de mi cuenta?", "es"),
        ("Je voudrais annuler ma commande pour le mois de mai", "fr"),
        ("Ich habe eine Frage zu der Rechnung und sie ist nicht korrekt", "de"),
        ("請問我的訂單什麼時候到", "zh"),
        ("注文はいつ届きますか", "ja"),
        ("Где мой заказ?", "cyrillic"),
        ("12345", "und"),
    ],
)
def test_detect_language(text, lang):
    assert detect_language(text) == lang


def test_latest_year_and_durations():
    assert latest_year("from 2023-03-01 to March 2, 2024") == "2024"
    assert latest_year("order 12345 of 1800 items") == "none"
    assert parse_duration("24h").total_seconds() == 86400
    assert parse_duration("30m").total_seconds() == 1800
    with pytest.raises(DriftError):
        parse_duration("yesterday")


def test_a_logged_output_of_runaway_brackets_is_not_json_and_does_not_crash_the_check(log_dir):
    """A small model stuck writing ``[[[[...`` until max_tokens is ordinary log content: the
    JSON parse hits Python's recursion limit, which must read as "not JSON", not end the check."""
    import datetime as dt

    from evals_traffic import call_row

    from evals.drift import load_window
    from gateway.store import LogStore, LogWriter

    now = dt.datetime.now(dt.UTC)
    hour_us = 3_600_000_000
    now_us = int(now.timestamp() * 1e6)
    with LogWriter(log_dir) as w:
        for i, text in enumerate(traffic(120, seed=11)):
            answer = "[" * 5000 if i % 10 == 0 else json.dumps({"status": "open", "n": i % 4})
            ts = now_us - (3 * hour_us if i < 80 else hour_us // 2) + i
            w.append("calls", call_row(route="support", prompt=text, answer=answer, ts=ts))
    with LogStore.open(log_dir) as store:
        ref = load_window(store, "support", now - dt.timedelta(hours=4), now - dt.timedelta(hours=1))
        cur = load_window(store, "support", now - dt.timedelta(hours=1), now)
    assert len(ref) == 80 and len(cur) == 40
    report = check_drift(ref, cur, CONFIG, route="support")
    assert report.check("output_length").p_value is not None
    assert not report.check("output.status").drifted


def test_a_half_written_calibration_cache_is_recomputed_not_a_crash(tmp_path, monkeypatch):
    """The classifier's calibration is cached on disk; a worker killed while writing it (or a
    second worker reading while the first writes) leaves a truncated file, which later checks
    of that reference must recompute instead of failing on for good."""
    from evals.drift import classifier

    reference, current = samples(traffic(300, seed=1)), samples(traffic(150, seed=2))
    cache = tmp_path / "_calibration"
    monkeypatch.setattr(classifier, "_CALIBRATION", {})  # earlier tests' in-memory copies would skip the file
    first = check_drift(reference, current, CONFIG, cache_dir=cache)
    (cached,) = cache.glob("*.json")
    text = cached.read_text()
    cached.write_text(text[: len(text) // 2])  # what a crash mid-write leaves
    monkeypatch.setattr(classifier, "_CALIBRATION", {})  # a fresh process: no in-memory copy
    again = check_drift(reference, current, CONFIG, cache_dir=cache)
    assert again.check("domain_classifier").threshold == first.check("domain_classifier").threshold
    assert json.loads(cached.read_text()) == json.loads(text)  # the cache is whole again
    assert not list(cache.glob("*.tmp*"))
