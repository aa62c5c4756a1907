"""The review console against a real gateway and a known call log, in headless Chromium.

The log is written through the store's own `LogWriter` before the gateway starts: route
``bot`` in canary, 40 served baseline calls (4 errors, 10 thumbs up, 10 down from users, and
one reviewer thumb that must not count) and 20 served candidate calls (10 up), one baseline
call with a shadow candidate sibling whose JSON answer differs, and 3 unrouted 401s. The
dashboard must show the numbers ``eval outcomes`` computes for the same log; the compare
view, the choice event, a keyboard run through a queue, a bulk action and a split change
with its audit entry are checked end to end. Screenshots go to ``tmp_path`` (and to
``$SHADOWTUNE_SCREENSHOTS`` when set).
"""

from __future__ import annotations

import datetime as dt
import html
import os
import re
import shutil
import time
from pathlib import Path

import httpx
import orjson
import pytest

from gateway.store import LogStore, LogWriter
from gateway.store.ids import new_id
from tests.e2e.test_review_page import CHROMIUM, CHROMIUM_ARGS
from tests.support.require import require

HOUR = 3600
BASE_JSON = '{"date": "2024-03-14", "city": "Paris"}'
CAND_JSON = '{"date": "2023-03-14", "city": "Paris"}'


def _call(cid: str, ts: float, variant: str, j: int, **extra):
    answer = extra.pop("answer", f"{variant} answer {j}")
    return {
        "call_id": cid,
        "ts": int(ts * 1e6),
        "route": "bot",
        "variant": variant,
        "served": True,
        "mode": "canary",
        "route_version": 1,
        "user": f"u{j % 30}",
        "status": 200,
        "latency_ms": float((100 if variant == "baseline" else 50) + j),
        "upstream": "base" if variant == "baseline" else "cand",
        "upstream_model": "echo-base" if variant == "baseline" else "echo-cand",
        "input_tokens": 1000 if variant == "baseline" else 200,
        "output_tokens": 100 if variant == "baseline" else 50,
        "request": orjson.dumps(
            {"model": "bot", "messages": [{"role": "user", "content": f"question {j}"}]}
        ).decode(),
        "response": orjson.dumps(
            {"choices": [{"message": {"role": "assistant", "content": answer}}]}
        ).decode(),
        "output_text": answer,
        **extra,
    }


def _event(
    cid: str, ts: float, kind: str, value: str | None, *, source: str = "api", reviewer=None, user=None
):
    return {
        "event_id": new_id("evt"),
        "call_id": cid,
        "ts": int(ts * 1e6),
        "kind": kind,
        "value": value,
        "value_num": {"up": 1.0, "down": 0.0}.get(value or ""),
        "source": source,
        "reviewer": reviewer,
        "user": user,
    }


def write_known_log(log_dir: str) -> dict[str, object]:
    """The log described in the module docstring; returns the ids the tests look for."""
    start = (int(time.time()) // HOUR - 6) * HOUR + 300  # one hour bucket, 6 hours ago
    calls, events = [], []
    base_ids, down_ids = [], []
    for j in range(40):
        cid = new_id("call")
        ts = start + j * 10
        err = j % 10 == 0
        extra = {"status": 500, "error_type": "upstream_error"} if err else {}
        if j == 5:
            extra["answer"] = BASE_JSON
        calls.append(_call(cid, ts, "baseline", j, **extra))
        base_ids.append(cid)
        if j % 4 == 0:
            events.append(_event(cid, ts + 5, "thumbs", "up", user=f"u{j % 30}"))
        elif j % 4 == 1:
            events.append(_event(cid, ts + 5 + j, "thumbs", "down", user=f"u{j % 30}"))
            down_ids.append(cid)
    events.append(_event(base_ids[2], start + 30, "thumbs", "up", source="reviewer", reviewer="someone"))
    pair_base = base_ids[5]
    shadow = new_id("call")
    calls.append(
        {
            **_call(shadow, start + 51, "candidate", 5, answer=CAND_JSON),
            "served": False,
            "parent_call_id": pair_base,
        }
    )
    for j in range(20):
        cid = new_id("call")
        ts = start + 2 + j * 20
        calls.append(_call(cid, ts, "candidate", j))
        if j % 2 == 0:
            events.append(_event(cid, ts + 5, "thumbs", "up", user=f"u{j % 30}"))
    for k in range(3):
        calls.append(
            {
                "call_id": new_id("call"),
                "ts": int((start + 100 + k) * 1e6),
                "status": 401,
                "error_type": "invalid_api_key",
                "served": True,
            }
        )
    with LogWriter(log_dir) as w:
        for c in calls:
            w.append("calls", c)
        for e in events:
            w.append("events", e)
    return {"start": start, "pair": pair_base, "shadow": shadow, "down": list(reversed(down_ids))}


@pytest.fixture
def console(make_settings, start_gateway, log_dir):
    known = write_known_log(log_dir)
    gw = start_gateway(
        make_settings(
            upstreams={
                "base": {"model": "echo-base", "price_in": 2.0, "price_out": 8.0},
                "cand": {"model": "echo-cand", "price_in": 0.5, "price_out": 1.5},
            },
            routes={"bot": {"baseline": "base", "candidate": "cand", "mode": "canary", "share": 20}},
        )
    )
    return gw, known


def browser_or_skip():
    require(os.path.exists(CHROMIUM), f"no Chromium at {CHROMIUM}", "apt-get install chromium")
    from playwright import sync_api

    return sync_api


def keep(tmp_path: Path, *names: str) -> None:
    target = os.environ.get("SHADOWTUNE_SCREENSHOTS")
    if target:
        for name in names:
            shutil.copy(tmp_path / name, Path(target) / name)


def events(log_dir: str, where: str = "TRUE") -> list[dict]:
    with LogStore.open(log_dir) as s:
        return s.sql(f"SELECT * FROM events WHERE {where} ORDER BY ts, event_id")


def points(page, chart: str, series: str) -> list[float]:
    loc = page.locator(f'svg#{chart} g.points[data-series="{series}"] circle')
    return [float(loc.nth(i).get_attribute("data-y")) for i in range(loc.count())]


# -- the dashboard ----------------------------------------------------------------------
@pytest.mark.browser
def test_the_dashboard_charts_and_rates_are_the_numbers_of_eval_outcomes(console, log_dir, tmp_path):
    from evals.online.outcomes import outcomes_report
    from evals.worth_it import worth_it_report

    sync_api = browser_or_skip()
    gw, _known = console
    with LogStore.open(log_dir) as s:
        report = outcomes_report(s, "bot", since=time.time() - 23 * HOUR)
        prices = {"base": (2.0, 8.0), "cand": (0.5, 1.5)}
        worth = worth_it_report(s, "bot", time.time() - 23 * HOUR, prices=prices)
    (period,) = report["periods"]
    expected = period["variants"]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{gw.url}/review")
            stats = page.locator("#stats")
            assert stats.locator('tr[data-variant="baseline"] td.calls').inner_text() == "40"
            assert (
                stats.locator('tr[data-variant="candidate"] td.calls').inner_text() == "21"
            )  # 20 + 1 shadow
            assert stats.locator('tr[data-variant="candidate"] td.served').inner_text() == "20"
            assert stats.locator('tr[data-variant="baseline"] td.error-rate').inner_text() == "10.0 %"
            assert page.locator("#stats tr").count() == 3  # header + 2: the unrouted 401s are not a route
            unrouted = page.locator("#unrouted tbody tr")
            assert unrouted.count() == 1 and unrouted.locator("td").nth(0).inner_text() == "401"
            assert unrouted.locator("td").nth(2).inner_text() == "3"

            # the outcome rates: eval outcomes' numbers and intervals, with both definitions shown
            for variant, up, up_rated in (
                ("baseline", "25.0 %", "50.0 %"),
                ("candidate", "50.0 %", "100.0 %"),
            ):
                row = page.locator(f'#rates tr[data-variant="{variant}"]')
                cell = row.locator("td.up span[data-value]")
                value, lo, hi = (float(cell.get_attribute(a)) for a in ("data-value", "data-lo", "data-hi"))
                want = expected[variant]["thumbs_up_rate"]
                assert value == pytest.approx(want["value"], abs=1e-12)
                assert (lo, hi) == (
                    pytest.approx(want["ci"][0], abs=1e-9),
                    pytest.approx(want["ci"][1], abs=1e-9),
                )
                assert cell.inner_text() == up
                assert row.locator("td.up-rated").inner_text() == up_rated
                err = float(row.locator("td.errors span").get_attribute("data-value"))
                assert err == pytest.approx(expected[variant]["error_rate"]["value"], abs=1e-12)
            assert "among rated calls" in page.locator("#rates thead").inner_text()
            assert "among all served calls" in page.locator("#rates thead").inner_text()

            # the charts: one hour bucket holds the whole log
            assert points(page, "traffic-bot", "baseline") == [40]
            assert points(page, "traffic-bot", "candidate") == [20]
            assert points(page, "traffic-bot", "candidate (shadow)") == [1]
            assert points(page, "errors-bot", "baseline") == [pytest.approx(0.1)]
            assert points(page, "thumbs_up_rate-bot", "baseline") == [pytest.approx(0.25)]
            band = page.locator('svg#thumbs_up_rate-bot g.points[data-series="candidate"] circle')
            assert float(band.get_attribute("data-lo")) == pytest.approx(
                expected["candidate"]["thumbs_up_rate"]["ci"][0], abs=1e-6
            )
            assert points(page, "canary-bot", "candidate share") == [pytest.approx(100 * 20 / 60, abs=1e-3)]
            tip = page.locator("svg#canary-bot circle title").text_content()
            assert "20/60" in tip
            p50 = points(page, "latency-bot", "baseline p50")[0]
            assert 115 <= p50 <= 125  # latencies 100..139 ms

            # the "Worth it?" panel: report worth-it's figures, prices from the gateway's settings
            panel = page.locator('#worth .worth[data-route="bot"]')
            for variant in ("baseline", "candidate"):
                row, want = panel.locator(f'tr[data-variant="{variant}"]'), worth["variants"][variant]
                calls = row.locator("td.calls")
                assert int(calls.get_attribute("data-served")) == want["served"]
                assert int(calls.get_attribute("data-shadow")) == want["shadow"]
                cost = float(row.locator("td.cost").get_attribute("data-value"))
                assert cost == pytest.approx(want["cost_per_1k_usd"], rel=1e-12)
                lat = row.locator("td.latency")
                assert float(lat.get_attribute("data-p50")) == pytest.approx(want["latency_p50_ms"])
                assert float(lat.get_attribute("data-p95")) == pytest.approx(want["latency_p95_ms"])
            assert panel.locator('tr[data-variant="candidate"] td.calls').inner_text() == "21 (20 / 1)"
            assert panel.locator('tr[data-variant="baseline"] td.cost').inner_text() == "$2.80"
            assert panel.locator('tr[data-variant="candidate"] td.cost').inner_text() == "$0.1750"
            assert panel.locator('tr[data-variant="baseline"] td.tokens').inner_text() == "1,000 / 100"
            for label in ("current", "full"):
                at = panel.locator(f'ul.projection li[data-at="{label}"]')
                want_at = worth["projection"]["at"][label]
                assert float(at.get_attribute("data-share")) == pytest.approx(want_at["share"])
                saved = float(at.get_attribute("data-saved"))
                assert saved == pytest.approx(want_at["monthly_saved_usd"], rel=1e-12)
            assert "no price" not in panel.inner_text()
            panel.locator('a[href="#charts-bot"]').first.click()
            assert page.locator("#charts-bot").is_visible()
            page.screenshot(path=str(tmp_path / "dashboard-charts.png"), full_page=True)
        finally:
            browser.close()
    keep(tmp_path, "dashboard-charts.png")


# -- compare ------------------------------------------------------------------------------
@pytest.mark.browser
def test_compare_shows_the_word_and_json_diff_and_a_choice_becomes_a_reviewer_event(
    console, log_dir, tmp_path
):
    sync_api = browser_or_skip()
    gw, known = console
    pair, shadow = known["pair"], known["shadow"]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"{gw.url}/review/calls/{pair}")
            assert page.locator("#word-diff del").all_inner_texts() == ['"2024-03-14",']
            assert page.locator("#word-diff ins").all_inner_texts() == ['"2023-03-14",']
            assert (
                page.locator("#word-diff").inner_text()
                == '{"date": "2024-03-14","2023-03-14", "city": "Paris"}'
            )
            rows = page.locator("#json-diff tbody tr")
            assert rows.count() == 2
            date = page.locator('#json-diff tr[data-path="$.date"]')
            assert date.get_attribute("data-op") == "changed"
            assert date.locator("td").nth(1).inner_text() == '"2024-03-14"'
            assert date.locator("td").nth(2).inner_text() == '"2023-03-14"'
            assert page.locator('#json-diff tr[data-path="$.city"]').get_attribute("data-op") == "same"
            assert page.get_by_text("No judge run has looked at this pair.").count() == 1
            page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
            page.get_by_role("button", name="B: candidate").click()
            page.wait_for_url("**?done=choice")
            assert page.get_by_role("status").inner_text() == "Choice recorded."
            assert "your last choice: candidate" in page.locator("body").inner_text()
        finally:
            browser.close()
    (choice,) = events(log_dir, "kind = 'choice'")
    assert (choice["call_id"], choice["value"], choice["source"], choice["reviewer"]) == (
        pair,
        shadow,
        "reviewer",
        "local",
    )
    assert orjson.loads(choice["data"]) == {
        "reviewer": "local",
        "variant": "candidate",
        "baseline_call_id": pair,
        "candidate_call_id": shadow,
    }
    with LogStore.open(log_dir) as s:  # a reviewer's choice is not a user outcome
        assert s.sql("SELECT choice FROM outcomes WHERE call_id = ?", [pair]) == [{"choice": None}]
    keep(tmp_path, "compare.png")


# -- queues -------------------------------------------------------------------------------
@pytest.mark.browser
def test_a_keyboard_run_through_the_thumbs_down_queue(console, log_dir, tmp_path):
    sync_api = browser_or_skip()
    gw, known = console
    down = known["down"]
    dialogs: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))
            page.goto(f"{gw.url}/review/queues")
            assert page.locator('#queues tr[data-queue="thumbs_down"] .count').inner_text() == "10"
            assert page.locator('#queues tr[data-queue="errors"] .count').inner_text() == "4"
            assert page.locator('#queues tr[data-queue="relabel_needed"] .count').inner_text() == "10"
            assert page.locator('#queues tr[data-queue="sample"] .count').inner_text() == "60"
            page.locator('#queues tr[data-queue="thumbs_down"] a').click()
            assert page.locator("#calls tbody tr").count() == 10
            listed = [page.locator("#calls tbody tr").nth(i).get_attribute("data-call-id") for i in range(10)]
            assert listed == down  # the latest thumb first
            page.locator("#queue-start").click()
            bar = page.locator("#queue-progress")
            assert bar.inner_text() == "item 1 of 10 · 0 reviewed"
            assert page.locator("h1 code").inner_text() == down[0]

            page.keyboard.press("d")  # reviewer thumbs down, back on the same item
            page.wait_for_url("**done=thumbs")
            assert bar.inner_text() == "item 1 of 10 · 1 reviewed"
            page.keyboard.press("j")
            page.wait_for_url(re.compile(r".*/thumbs_down/1\?.*"))
            assert page.locator("h1 code").inner_text() == down[1]
            page.keyboard.press("x")  # exclude, after the confirmation
            page.wait_for_url("**done=exclude")
            assert page.locator(".badge.excluded").count() == 1
            page.keyboard.press("j")
            page.wait_for_url(re.compile(r".*/thumbs_down/2\?.*"))
            page.keyboard.press("r")
            assert page.evaluate("document.activeElement.id") == "answer"
            page.keyboard.press("Control+a")
            page.keyboard.type("fixed by keyboard")
            page.keyboard.press("Control+Enter")
            page.wait_for_url("**done=relabel")
            assert bar.inner_text() == "item 3 of 10 · 3 reviewed"
            page.keyboard.press("k")
            page.wait_for_url(re.compile(r".*/thumbs_down/1\?.*"))
            page.screenshot(path=str(tmp_path / "queue.png"), full_page=True)
            page.locator("#queue-bar a").first.click()
            assert page.locator("#calls tbody tr.reviewed").count() == 3
        finally:
            browser.close()
    assert dialogs == ["Exclude this call from training datasets?"]
    got = [
        (e["kind"], e["call_id"], e["value"])
        for e in events(log_dir, "source = 'reviewer' AND reviewer = 'local'")
    ]
    assert got == [
        ("thumbs", down[0], "down"),
        ("exclude", down[1], None),
        ("relabel", down[2], "fixed by keyboard"),
    ]
    keep(tmp_path, "queue.png")


def test_a_bulk_action_applies_to_every_selected_call_and_keeps_the_rules(console, log_dir):
    from tests.e2e.test_review_page import form_token

    gw, known = console
    picked = known["down"][:3]
    with httpx.Client(base_url=gw.url) as client:
        csrf = form_token(client, picked[0])
        fields = {"csrf": csrf, "action": "exclude", "back": "/review/queues/thumbs_down", "call_id": picked}
        cross = client.post("/review/bulk", data=fields, headers={"origin": "http://evil.example"})
        assert cross.status_code == 403
        assert client.post("/review/bulk", data={**fields, "csrf": ""}).status_code == 403
        bad = client.post("/review/bulk", data={**fields, "call_id": [*picked, "call_NOPE"]})
        assert bad.status_code == 404 and bad.json()["error"]["code"] == "call_not_found"
        wrong = client.post("/review/bulk", data={**fields, "action": "delete"})
        assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "action"
        assert events(log_dir, "kind = 'exclude'") == []
        r = client.post("/review/bulk", data=fields)
        assert r.status_code == 303 and r.headers["location"] == "/review/queues/thumbs_down?done=bulk&n=3"
        evil = client.post(
            "/review/bulk", data={**fields, "back": "https://evil.example/", "call_id": picked[0]}
        )
        assert evil.headers["location"].startswith("/review/calls?")  # never a redirect off the site
    assert sorted(e["call_id"] for e in events(log_dir, "kind = 'exclude'")) == sorted([*picked, picked[0]])


# -- operations -----------------------------------------------------------------------------
@pytest.mark.browser
def test_a_split_change_is_confirmed_applied_and_audited_and_the_controller_pauses(
    console, log_dir, tmp_path
):
    sync_api = browser_or_skip()
    gw, _ = console
    dialogs: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))
            page.goto(f"{gw.url}/review/ops")
            row = page.locator('#routes tr[data-route="bot"]')
            assert row.locator(".share").inner_text() == "20 %"
            row.locator('input[name="share"]').fill("50")
            row.locator('input[name="reason"]').fill("ramp up <b>now</b>")
            row.get_by_role("button", name="Review change…").click()
            change = page.locator('#confirm-change tr[data-field="share"] td')
            assert [change.nth(i).inner_text() for i in range(3)] == ["share", "20", "50"]
            assert httpx.get(gw.url + "/admin/routes/bot").json()["share"] == 20  # nothing changed yet
            page.screenshot(path=str(tmp_path / "ops-confirm.png"), full_page=True)
            page.get_by_role("button", name="Confirm the change").click()
            page.wait_for_url("**/review/ops?done=route*")
            assert httpx.get(gw.url + "/admin/routes/bot").json()["share"] == 50
            audit = page.locator('#audit tbody tr[data-route="bot"]').first
            assert audit.locator(".actor").inner_text() == "reviewer:local"
            assert audit.locator(".reason").inner_text() == "ramp up <b>now</b>"  # as text, escaped
            assert "share: 20 → 50" in audit.locator(".change").inner_text()

            ctl = page.locator('.controller[data-route="bot"]')
            ctl.locator('input[name="reason"]').fill("investigating a spike")
            ctl.get_by_role("button", name="Pause the controller").click()
            page.wait_for_url("**done=pause")
            assert ctl.locator(".badge").inner_text() == "paused"
            assert "investigating a spike" in ctl.inner_text()
            page.screenshot(path=str(tmp_path / "ops.png"), full_page=True)
            page.goto(f"{gw.url}/review")
            marker = page.locator("svg#canary-bot g.marker")
            assert marker.count() == 1 and marker.get_attribute("data-label") == "pause"
            assert "investigating a spike" in (marker.locator("title").text_content() or "")
        finally:
            browser.close()
    assert dialogs == ["Pause the controller of bot?"]
    history = httpx.get(gw.url + "/admin/routes/bot/history").json()["data"]
    assert history[-1]["actor"] == "reviewer:local" and history[-1]["reason"] == "ramp up <b>now</b>"
    assert history[-1]["after"]["share"] == 50
    keep(tmp_path, "ops-confirm.png", "ops.png")


def test_every_new_action_needs_same_origin_and_csrf(console, log_dir):
    from tests.e2e.test_review_page import form_token

    gw, known = console
    pair = known["pair"]
    posts = [
        (f"/review/calls/{pair}/choice", {"value": "candidate"}),
        ("/review/ops/routes/bot", {"share": "60", "reason": "x", "confirm": "yes"}),
        ("/review/ops/controller/bot", {"action": "pause", "reason": "x"}),
        ("/review/bulk", {"action": "exclude", "call_id": pair}),
    ]
    with httpx.Client(base_url=gw.url) as client:
        csrf = form_token(client, pair)
        for url, data in posts:
            r = client.post(url, data={**data, "csrf": csrf}, headers={"sec-fetch-site": "cross-site"})
            assert r.status_code == 403 and r.json()["error"]["code"] == "cross_origin", url
            r = client.post(url, data=data)
            assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed", url
        no_reason = client.post("/review/ops/routes/bot", data={"share": "60", "reason": " ", "csrf": csrf})
        assert no_reason.status_code == 400 and no_reason.json()["error"]["param"] == "reason"
        bad_mode = client.post("/review/ops/routes/bot", data={"mode": "yolo", "reason": "x", "csrf": csrf})
        assert bad_mode.status_code == 400 and bad_mode.json()["error"]["param"] == "mode"
        assert (
            client.post(
                "/review/ops/routes/nope", data={"share": "1", "reason": "x", "csrf": csrf}
            ).status_code
            == 404
        )
        bad_choice = client.post(f"/review/calls/{pair}/choice", data={"value": "both", "csrf": csrf})
        assert bad_choice.status_code == 400
    assert events(log_dir) == events(log_dir, "source <> 'reviewer' OR reviewer = 'someone'")
    assert httpx.get(gw.url + "/admin/routes/bot").json()["share"] == 20


def test_the_judges_verdicts_and_drift_reports_show_where_evals_writes_them(
    make_settings, start_gateway, log_dir
):
    """``eval judge`` writes ``evals/judge/<run>/verdicts.parquet`` and ``drift check`` ``drift/<route>/*.json``
    under the log directory: the call page, the judge-lost queue and the dashboard read them."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    known = write_known_log(log_dir)
    pair, shadow = known["pair"], known["shadow"]
    run = Path(log_dir) / "evals" / "judge" / "run-1"
    run.mkdir(parents=True)
    verdicts = [
        {
            "run_id": "run-1",
            "route": "bot",
            "item_id": "i1",
            "outcome": "baseline",
            "call_id": pair,
            "candidate_call_id": shadow,
            "identical": False,
            "position_consistent": True,
            "votes": json.dumps({"judge-a": "baseline"}),
            "reasons": json.dumps({"judge-a": "the year is <wrong>"}),
            "consistency": "{}",
            "abstained": False,
        },
    ]
    pq.write_table(pa.Table.from_pylist(verdicts), run / "verdicts.parquet")
    drift = Path(log_dir) / "drift" / "bot"
    drift.mkdir(parents=True)
    now = time.time()
    for k, stat in enumerate((0.05, 0.4)):
        report = {
            "report_id": f"drift_{k}",
            "route": "bot",
            "created_at": dt.datetime.fromtimestamp(now - 3600 * (2 - k), dt.UTC).isoformat(),
            "checks": [
                {
                    "name": "output_years",
                    "statistic": stat,
                    "threshold": 0.2,
                    "threshold_on": "statistic",
                    "drifted": stat > 0.2,
                }
            ],
        }
        (drift / f"drift_{k}.json").write_text(json.dumps(report))
    gw = start_gateway(
        make_settings(
            upstreams={
                "base": {"model": "echo-base", "price_in": 2.0, "price_out": 8.0},
                "cand": {"model": "echo-cand", "price_in": 0.5, "price_out": 1.5},
            },
            routes={"bot": {"baseline": "base", "candidate": "cand", "mode": "canary", "share": 20}},
        )
    )
    page = httpx.get(f"{gw.url}/review/calls/{pair}").text
    assert '<tr data-outcome="baseline">' in page and "the year is &lt;wrong&gt;" in page
    lost = httpx.get(f"{gw.url}/review/queues/judge_lost").text
    assert re.findall(r'<tr data-call-id="([^"]+)"', lost) == [pair]
    dash = httpx.get(f"{gw.url}/review").text
    judge = re.search(r'<svg class="chart" id="judge-win-rate".*?</svg>', dash, re.S)
    assert judge and 'data-y="0"' in judge.group(0) and "lost 1" in judge.group(0)
    drift_svg = re.search(r'<svg class="chart" id="drift-bot".*?</svg>', dash, re.S)
    assert drift_svg is not None
    assert re.findall(r'data-y="([0-9.]+)"', drift_svg.group(0)) == ["0.25", "2"]  # statistic / threshold
    assert "DRIFT" in drift_svg.group(0)


def test_the_random_sample_is_every_served_call_once_in_a_seeded_order(console):
    gw, _ = console

    def listed(seed):
        html = httpx.get(f"{gw.url}/review/queues/sample", params={"seed": seed}).text
        return re.findall(r'<tr data-call-id="([^"]+)"', html)

    a, again, b = listed("s1"), listed("s1"), listed("s2")
    assert len(a) == 60 and len(set(a)) == 60  # 40 + 20 served; no shadow call, no unrouted request
    assert a == again and sorted(a) == sorted(b) and a != b
    first = httpx.get(f"{gw.url}/review/queues/sample/0", params={"seed": "s1"}).text
    assert f"<code>{a[0]}</code>" in first  # the item pages follow the list's order


def test_a_text_search_goes_on_after_its_last_call_and_says_how_far_back_it_looked(console, log_dir):
    gw, _ = console

    def page(url):
        text = httpx.get(gw.url + url).text
        return text, re.findall(r'<tr data-call-id="([^"]+)"', text)

    with LogStore.open(log_dir) as s:
        expected = [
            r["call_id"]
            for r in s.sql(
                "SELECT call_id FROM calls WHERE request ILIKE '%question%' ORDER BY ts DESC, call_id DESC"
            )
        ]
    assert len(expected) == 61  # 40 baseline, 20 candidate, 1 shadow
    first_html, first = page("/review/calls?q=QUESTION")
    assert first == expected[:50]
    older = re.search(r'<a href="([^"]+)" rel="next">Older', first_html)
    assert older is not None and "before=" in older.group(1) and "before_id=" in older.group(1)
    second_html, second = page(html.unescape(older.group(1)))
    assert second == expected[50:]
    assert 'data-complete="true"' in second_html and "Every call of that time was searched" in second_html
    assert 'rel="next"' not in second_html and 'rel="first"' in second_html
    for before in ("soon", "²", "9" * 30, "-5"):
        bad = httpx.get(gw.url + "/review/calls", params={"q": "question", "before": before})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "before"
