"""Output-side drift: the seed's case (inputs move to 2024, the candidate keeps writing 2023) is
named within ~100 calls; answers that follow their inputs raise no alarm."""

from __future__ import annotations

import dataclasses
import json
import random
import time

import pytest
from click.testing import CliRunner

from evals.drift.guardrail import output_guardrail
from evals.drift.output import Output, check_outputs, features, load_output_reports
from gateway.cli import main
from gateway.store import LogWriter
from tests.support.tiny_model import call_record

NAMES = ["Alice", "Bob", "Carol", "Dave"]


def _order(rng: random.Random, year: int) -> tuple[str, dict[str, object]]:
    month, day = rng.randint(1, 12), rng.randint(1, 28)
    fields = {"name": rng.choice(NAMES), "qty": rng.randint(1, 9), "date": f"{year}-{month:02d}-{day:02d}"}
    text = f"Order from {fields['name']}: {fields['qty']} lamps, ordered on {month}/{day}/{year}."
    return text, fields


def _reference(rng: random.Random, n: int = 200, year: int = 2023) -> list[Output]:
    out = []
    for _ in range(n):
        text, fields = _order(rng, year)
        out.append(Output(text, json.dumps(fields)))
    return out


def _window(rng: random.Random, n: int, *, candidate_year: int | None, year: int = 2024) -> list[Output]:
    """``n`` served baseline calls that follow their input, each with a shadow candidate call."""
    out = []
    for i in range(n):
        text, fields = _order(rng, year)
        out.append(Output(text, json.dumps(fields), "baseline", f"b{i}", model="gpt"))
        cand = dict(fields)
        if candidate_year is not None:
            cand["date"] = str(cand["date"]).replace(str(year), str(candidate_year), 1)
        out.append(
            Output(text, json.dumps(cand), "candidate", f"c{i}", pair_of=f"b{i}", served=False, model="v1")
        )
    return out


def test_features_find_years_the_input_does_not_hold():
    f = features(Output("shipped 5/3/2024", '{"date": "2023-05-03", "qty": 2}'))
    assert f.novel_years == ("2023",) and f.year_fields == ("date",) and f.novel_dates == ("2023-05-03",)
    assert f.fields == {"date": "string", "qty": "number"} and f.is_json
    assert features(Output("on 2024-05-03", '{"date": "2024-05-03"}')).novel_years == ()
    assert features(Output("x", "I'm sorry, I can't help with that.")).refusal
    assert features(Output("x", "  ")).empty
    assert features(Output("in 2024", "It was 2019.")).year_fields == ("text",)


def test_the_seeds_case_is_named_within_100_calls():
    rng = random.Random(1)
    ref = _reference(rng)
    first = None
    for n in (10, 20, 30, 40, 50):  # n served calls + n shadow calls
        report = check_outputs(_window(random.Random(n), n, candidate_year=2023), ref, route="orders")
        if report.drifted:
            first = n
            break
    assert first is not None and 2 * first <= 100, first
    top = report.findings[0]
    assert (top["variant"], top["check"], top["field"], top["years"]) == (
        "candidate",
        "novel_years",
        "date",
        ["2023"],
    )
    assert top["input_years"] == ["2024"]
    assert "candidate writes year 2023 in field date" in top["summary"]
    against = {f["against"] for f in report.findings if f["check"] == "novel_years"}
    assert against == {
        "reference",
        "baseline",
    }  # against the training data and the baseline on the same inputs
    assert report.variants["candidate"]["paired_with"] == {"baseline": first}
    assert not [f for f in report.findings if f["variant"] == "baseline" and f["check"] == "novel_years"]


def _noisy(rng: random.Random, outputs: list[Output]) -> list[Output]:
    """Noise every sample shares: an occasional prose answer or refusal, a missing field."""
    out = []
    for o in outputs:
        r = rng.random()
        text = o.output
        if r < 0.05:
            text = "Sorry, I cannot read this order."
        elif r < 0.1:
            obj = json.loads(o.output)
            obj.pop("qty")
            text = json.dumps(obj)
        out.append(dataclasses.replace(o, output=text))
    return out


def test_answers_that_follow_their_inputs_raise_no_alarm():
    alarms = []
    for seed in range(30):
        rng = random.Random(100 + seed)
        current = _noisy(rng, _window(rng, 60, candidate_year=None))
        report = check_outputs(current, _noisy(rng, _reference(rng)), route="orders")
        alarms.extend(report.findings)
    assert len(alarms) <= 2, alarms  # Bonferroni holds each report at alpha = 0.05


def test_a_changed_field_type_and_refusals_are_named():
    rng = random.Random(7)
    current = []
    for o in _window(rng, 80, candidate_year=None):
        if o.variant == "candidate":
            obj = json.loads(o.output)
            obj["qty"] = str(obj["qty"])
            text = json.dumps(obj) if rng.random() > 0.4 else "I'm sorry, but I can't help with that."
            o = Output(o.input, text, o.variant, o.call_id, o.pair_of, o.served, o.model)
        current.append(o)
    report = check_outputs(current, _reference(rng), route="orders")
    named = {(f["variant"], f["check"], f["field"]) for f in report.findings}
    assert ("candidate", "field_type", "qty") in named
    assert ("candidate", "refusal", None) in named
    assert not any(f["variant"] == "baseline" and f["against"] == "reference" for f in report.findings)


@pytest.fixture
def drifted_log(log_dir):
    """Last week: 2023 orders answered right; the last hour: 2024 orders, the shadow candidate writes 2023."""
    rng = random.Random(3)
    now_us = int(time.time() * 1e6)
    week = 7 * 86_400 * 1_000_000
    with LogWriter(log_dir) as w:
        for i in range(150):
            text, fields = _order(rng, 2023)
            w.append("calls", call_record([{"role": "user", "content": text}], json.dumps(fields),
                                          route="orders", ts_us=now_us - week + i * 1000))  # fmt: skip
        for i in range(50):
            text, fields = _order(rng, 2024)
            msgs = [{"role": "user", "content": text}]
            served = call_record(
                msgs, json.dumps(fields), route="orders", ts_us=now_us - 600_000_000 + i * 1000
            )
            w.append("calls", served)
            cand = dict(fields, date=str(fields["date"]).replace("2024", "2023"))
            shadow = call_record(msgs, json.dumps(cand), route="orders", variant="candidate", served=False,
                                 ts_us=now_us - 600_000_000 + i * 1000 + 1)  # fmt: skip
            shadow.update(parent_call_id=served["call_id"], upstream="orders-lora-v1")
            w.append("calls", shadow)
    return log_dir


def test_drift_check_names_variant_field_and_years_in_its_text_output(drifted_log):
    args = ["drift", "check", "--route", "orders", "--reference", "window:8d", "--current", "1h",
            "--rounds", "19", "--log-dir", drifted_log]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "OUTPUT DRIFT" in res.output
    assert "candidate writes year 2023 in field date, absent from its input (inputs say 2024)" in res.output
    (stored,) = load_output_reports(drifted_log, "orders")
    assert stored["findings"][0]["variant"] == "candidate"
    guard = output_guardrail(drifted_log, "orders", candidate="orders-lora-v1")
    assert guard["breached"] and "2023" in guard["reason"]
    assert not output_guardrail(drifted_log, "orders", candidate="orders-lora-v2")["breached"]

    js = CliRunner().invoke(main, [*args, "--json", "--no-save"])
    data = json.loads(js.stdout)
    assert data["outputs"]["findings"][0]["years"] == ["2023"]


def test_the_controller_rolls_back_a_canary_whose_candidate_drifts(drifted_log):
    from evals.drift.guardrail import hold_canary
    from evals.online.decision import Decision

    args = [
        "drift",
        "check",
        "--route",
        "orders",
        "--reference",
        "window:8d",
        "--current",
        "1h",
        "--rounds",
        "19",
    ]
    assert CliRunner().invoke(main, [*args, "--log-dir", drifted_log]).exit_code == 0
    advance = Decision("advance", 5.0, 25.0, "canary", "advance: not worse")
    held = hold_canary(advance, drifted_log, "orders", "orders-lora-v1")
    assert (held.action, held.share_to, held.mode_to) == ("rollback", 0.0, "shadow")
    assert "output drift guardrail" in held.reason and "2023" in held.reason
    assert hold_canary(advance, drifted_log, "orders", "orders-lora-v2") is advance  # another candidate
