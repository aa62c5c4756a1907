"""The review pages (``/review``) against a real gateway in shadow mode on the fake upstream.

Plain HTTP (httpx) for access control, escaping and the forms; a real headless Chromium
(Playwright, Debian's ``/usr/bin/chromium``) for the pages as a reviewer uses them.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from gateway.store import LogStore
from tests.support.require import require

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "review-s3cret"
QUESTIONS = ["hello there", "what is a LoRA?", '<script>alert("pwned")</script> & <b>bold</b>']


def shadow_settings(make_settings, **sections):
    return make_settings(
        upstreams={"base": {"model": "echo-base"}, "cand": {"model": "echo-cand"}},
        routes={"bot": {"baseline": "base", "candidate": "cand", "mode": "shadow"}},
        **sections,
    )


def send_calls(gw, log_dir) -> dict[str, str]:
    """One call per question through the openai SDK; question -> served call id, once every
    shadow row is logged and flushed."""
    client = OpenAI(base_url=gw.base_url, api_key="sk-test")
    ids = {}
    for text in QUESTIONS:
        raw = client.chat.completions.with_raw_response.create(
            model="bot", messages=[{"role": "user", "content": text}], user="u1"
        )
        ids[text] = raw.headers["x-request-id"]
    deadline = time.monotonic() + 15
    while LogStore.open(log_dir).count() < 2 * len(QUESTIONS) and time.monotonic() < deadline:
        time.sleep(0.05)
    gw.flush()
    assert LogStore.open(log_dir).count() == 2 * len(QUESTIONS)
    return ids


def form_token(client: httpx.Client, call_id: str) -> str:
    """The CSRF token a call page puts in its forms, as a browser would post it (the client keeps
    the page's ``shadowtune_csrf`` cookie)."""
    html = client.get(f"/review/calls/{call_id}").text
    tokens = set(re.findall(r'<input type="hidden" name="csrf" value="([^"]+)">', html))
    assert len(tokens) == 1, tokens
    assert client.cookies["shadowtune_csrf"] in tokens
    return tokens.pop()


def outcome(log_dir, call_id):
    rows = LogStore.open(log_dir).sql("SELECT * FROM outcomes WHERE call_id = ?", [call_id])
    return rows[0] if rows else None


def shadow_rows(log_dir, parent):
    return LogStore.open(log_dir).sql("SELECT call_id FROM calls WHERE parent_call_id = ?", [parent])


@pytest.fixture
def shadow_gateway(make_settings, start_gateway, log_dir):
    gw = start_gateway(shadow_settings(make_settings))
    return gw, send_calls(gw, log_dir)


# -- access -----------------------------------------------------------------------------
def test_without_an_admin_token_loopback_reaches_the_pages(shadow_gateway):
    gw, _ = shadow_gateway
    r = httpx.get(gw.url + "/review")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "set-cookie" not in r.headers


def test_with_an_admin_token_the_pages_need_it(make_settings, start_gateway):
    gw = start_gateway(shadow_settings(make_settings, server={"admin_token": TOKEN}))
    for path in ("/review", "/review/calls", "/review/calls/call_X"):
        r = httpx.get(gw.url + path)
        assert r.status_code == 401, path
        assert r.json()["error"]["code"] == "invalid_admin_token"
    assert httpx.get(gw.url + "/review", params={"token": "wrong"}).status_code == 401
    assert httpx.get(gw.url + "/review", cookies={"shadowtune_review": TOKEN}).status_code == 401
    bearer = httpx.get(gw.url + "/review", headers={"authorization": f"Bearer {TOKEN}"})
    assert bearer.status_code == 200
    assert "set-cookie" not in bearer.headers
    assert httpx.post(gw.url + "/review/calls/call_X/exclude").status_code == 401


def test_the_token_in_the_query_sets_an_http_only_cookie_that_opens_the_other_pages(
    make_settings, start_gateway
):
    gw = start_gateway(shadow_settings(make_settings, server={"admin_token": TOKEN}))
    with httpx.Client(base_url=gw.url) as client:
        first = client.get("/review", params={"token": TOKEN})
        assert first.status_code == 200
        cookie = first.headers["set-cookie"]
        assert cookie.startswith("shadowtune_review=")
        assert "HttpOnly" in cookie
        assert "Path=/review" in cookie
        assert re.search("samesite=strict", cookie, re.I)
        assert TOKEN not in cookie  # an HMAC of the token, not the token
        listing = client.get("/review/calls")  # the cookie alone, no token any more
        assert listing.status_code == 200
        assert "<h1>Calls</h1>" in listing.text


# -- rendering --------------------------------------------------------------------------
def test_user_text_is_html_escaped_on_every_page(shadow_gateway):
    gw, ids = shadow_gateway
    evil = QUESTIONS[2]
    call_id = ids[evil]
    with httpx.Client(base_url=gw.url) as client:
        # the relabel is user data too
        csrf = form_token(client, call_id)
        relabel = {"answer": "<img src=x onerror=alert(2)>", "csrf": csrf}
        assert client.post(f"/review/calls/{call_id}/relabel", data=relabel).status_code == 303
        pages = {
            "call": client.get(f"/review/calls/{call_id}").text,
            "list": client.get("/review/calls", params={"q": "script"}).text,
            "search echoed": client.get("/review/calls", params={"q": '"><script>alert(3)</script>'}).text,
        }
    for name, html in pages.items():
        assert "<script>alert" not in html, name
        assert "<img src=x" not in html, name
        assert "<b>bold" not in html, name
    assert (
        "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in pages["call"]
    )
    assert "echo-cand: &lt;script&gt;" in pages["call"]  # the candidate's answer, side by side
    assert "&lt;img src=x onerror=alert(2)&gt;" in pages["call"]
    assert "&lt;script&gt;alert(&#34;pwned&#34;)" in pages["list"]
    assert "&#34;&gt;&lt;script&gt;alert(3)&lt;/script&gt;" in pages["search echoed"]


def test_the_call_page_shows_the_tools_offered_and_the_tool_calls_made(shadow_gateway, log_dir):
    gw, _ = shadow_gateway
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    r = httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "bot", "messages": [{"role": "user", "content": "weather?"}], "tools": [tool]},
    )
    assert r.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "lookup"
    call_id = r.headers["x-request-id"]
    deadline = time.monotonic() + 15
    while not shadow_rows(log_dir, call_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    html = httpx.get(f"{gw.url}/review/calls/{call_id}").text
    assert "Tools offered: <code>lookup</code>" in html
    assert html.count('<span class="fn">lookup</span>') == 2  # baseline and candidate answers
    assert "&#34;q&#34;: &#34;weather?&#34;" in html


def test_the_calls_list_filters_and_pages(shadow_gateway):
    gw, ids = shadow_gateway

    def listed(**params):
        html = httpx.get(gw.url + "/review/calls", params=params).text
        return re.findall(r'<tr data-call-id="([^"]+)"', html)

    everything = listed()
    assert len(everything) == 6
    assert everything[0] > everything[-1]  # newest first (ids sort by time)
    assert set(listed(served="1")) == set(ids.values())
    assert len(listed(variant="candidate")) == 3
    assert set(listed(variant="candidate")).isdisjoint(ids.values())
    assert listed(status="error") == []
    assert len(listed(status="ok", route="bot")) == 6
    assert len(listed(q="LoRA")) == 2  # the served call and its shadow
    assert listed(q=ids["hello there"]) == [ids["hello there"]]
    assert listed(route="nope") == []
    assert listed(page="2") == []


def test_an_unknown_call_is_a_404(shadow_gateway):
    gw, ids = shadow_gateway
    assert httpx.get(gw.url + "/review/calls/call_NOPE").status_code == 404
    with httpx.Client(base_url=gw.url) as client:
        csrf = form_token(client, ids["hello there"])
        r = client.post("/review/calls/call_NOPE/relabel", data={"answer": "x", "csrf": csrf})
    assert r.status_code == 404


# -- actions ----------------------------------------------------------------------------
def test_relabel_exclude_and_thumbs_are_events_in_the_log(shadow_gateway, log_dir):
    gw, ids = shadow_gateway
    call_id = ids["what is a LoRA?"]
    with httpx.Client(base_url=gw.url) as client:
        csrf = form_token(client, call_id)
        r = client.post(f"/review/calls/{call_id}/relabel", data={"answer": "First try.", "csrf": csrf})
        assert r.status_code == 303
        assert r.headers["location"] == f"/review/calls/{call_id}?done=relabel"
        client.post(
            f"/review/calls/{call_id}/relabel",
            data={"answer": "A LoRA is\r\na low-rank adapter.", "csrf": csrf},
        )
        assert client.post(f"/review/calls/{call_id}/exclude", data={"csrf": csrf}).status_code == 303
        down = {"value": "down", "csrf": csrf}
        assert client.post(f"/review/calls/{call_id}/thumbs", data=down).status_code == 303
        bad = client.post(f"/review/calls/{call_id}/thumbs", data={"value": "sideways", "csrf": csrf})
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "value"
        blank = {"answer": "  ", "csrf": csrf}
        assert client.post(f"/review/calls/{call_id}/relabel", data=blank).status_code == 400
        page = client.get(f"/review/calls/{call_id}?done=relabel").text
    got = outcome(log_dir, call_id)
    assert got["relabel"] == "A LoRA is\na low-rank adapter."  # the latest one wins
    assert got["excluded"] is True
    assert (got["reviewer_thumbs_up"], got["reviewer_thumbs_down"]) == (0, 1)
    assert (got["thumbs_up"], got["thumbs_down"]) == (0, 0)  # a reviewer's thumb is not a user outcome
    events = LogStore.open(log_dir).sql("SELECT kind, source, reviewer, value FROM events ORDER BY ts")
    assert [e["kind"] for e in events] == ["relabel", "relabel", "exclude", "thumbs"]
    assert {(e["source"], e["reviewer"]) for e in events} == {("reviewer", "local")}
    assert "Relabel saved." in page
    assert "Excluded from datasets" in page
    assert 'id="relabel-current"' in page
    assert ">A LoRA is\na low-rank adapter.</textarea>" in page  # the form is prefilled with the relabel


def test_a_cross_origin_form_post_is_refused(shadow_gateway, log_dir):
    gw, ids = shadow_gateway
    call_id = ids["hello there"]
    with httpx.Client(base_url=gw.url) as client:
        csrf = form_token(client, call_id)
        for headers in (
            {"origin": "http://evil.example"},
            {"origin": "null"},  # a sandboxed frame
            {"sec-fetch-site": "cross-site"},
            {"sec-fetch-site": "same-site"},
        ):
            r = client.post(f"/review/calls/{call_id}/exclude", headers=headers, data={"csrf": csrf})
            assert r.status_code == 403, headers
            assert r.json()["error"]["code"] == "cross_origin"
        same = client.post(
            f"/review/calls/{call_id}/exclude", headers={"origin": gw.url}, data={"csrf": csrf}
        )
        assert same.status_code == 303
    assert LogStore.open(log_dir).count("events") == 1


def test_every_form_post_needs_the_pages_csrf_token(shadow_gateway, log_dir):
    gw, ids = shadow_gateway
    call_id = ids["hello there"]
    actions = [("relabel", {"answer": "x"}), ("exclude", {}), ("thumbs", {"value": "up"})]
    with httpx.Client(base_url=gw.url) as client, httpx.Client(base_url=gw.url) as other:
        csrf = form_token(client, call_id)
        other_csrf = form_token(other, call_id)
        assert other_csrf != csrf  # one token per browser (cookie)
        for action, data in actions:
            url = f"/review/calls/{call_id}/{action}"
            for token in (None, "", "x" * 43, other_csrf):  # none, empty, forged, another browser's
                fields = data if token is None else {**data, "csrf": token}
                r = client.post(url, data=fields)
                assert r.status_code == 403, (action, token)
                assert r.json()["error"]["code"] == "csrf_failed"
            # the right token without its cookie (a cross-site form copies the field, not the cookie)
            r = httpx.post(gw.url + url, data={**data, "csrf": csrf})
            assert r.status_code == 403
        for action, data in actions:
            assert (
                client.post(f"/review/calls/{call_id}/{action}", data={**data, "csrf": csrf}).status_code
                == 303
            )
        cookie = client.cookies.jar
        assert next(c for c in cookie if c.name == "shadowtune_csrf").path == "/review"
        assert form_token(client, call_id) == csrf  # the cookie is kept across pages
    kinds = [e["kind"] for e in LogStore.open(log_dir).sql("SELECT kind FROM events ORDER BY ts")]
    assert kinds == ["relabel", "exclude", "thumbs"]


# -- in a browser -----------------------------------------------------------------------
@pytest.mark.browser
def test_a_reviewer_compares_the_answers_and_relabels_in_a_browser(
    make_settings, start_gateway, log_dir, tmp_path: Path
):
    require(os.path.exists(CHROMIUM), f"no Chromium at {CHROMIUM}", "apt-get install chromium")
    from playwright import sync_api

    gw = start_gateway(shadow_settings(make_settings, server={"admin_token": TOKEN}))
    ids = send_calls(gw, log_dir)
    call_id = ids["hello there"]
    dialogs: list[str] = []

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

            # dashboard: the route, its mode, and the counts per variant
            page.goto(f"{gw.url}/review?token={TOKEN}&period=7d")
            assert page.locator("h1").inner_text() == "Dashboard"
            assert page.locator(".periods button.on").inner_text() == "7d"
            stats = page.locator("#stats")
            assert stats.locator('tr[data-route="bot"][data-variant="baseline"] td.calls').inner_text() == "3"
            assert (
                stats.locator('tr[data-route="bot"][data-variant="candidate"] td.calls').inner_text() == "3"
            )
            assert page.locator('#routes tr[data-route="bot"] .mode').inner_text() == "shadow"
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

            # the calls list (the cookie carries the token from here on), then served only
            page.get_by_role("link", name="Calls", exact=True).click()
            page.wait_for_url("**/review/calls")
            assert page.locator("#calls tbody tr").count() == 6
            page.get_by_label("served only").check()  # submits the filter form by itself (review.js)
            page.wait_for_url("**/review/calls?*served=1*")
            assert page.locator("#calls tbody tr").count() == 3

            # one call: the conversation, and both answers side by side
            page.locator(f'tr[data-call-id="{call_id}"] a').click()
            page.wait_for_url(f"**/review/calls/{call_id}")
            assert page.locator(".msg.user pre.text").inner_text() == "hello there"
            baseline = page.locator('#compare article[data-variant="baseline"]')
            candidate = page.locator('#compare article[data-variant="candidate"]')
            assert baseline.locator("pre.text").inner_text() == "echo-base: hello there"
            assert candidate.locator("pre.text").inner_text() == "echo-cand: hello there"
            left, right = baseline.bounding_box(), candidate.bounding_box()
            assert left is not None and right is not None
            assert left["x"] + left["width"] <= right["x"]  # next to each other ...
            assert abs(left["y"] - right["y"]) < 1  # ... on the same line
            assert page.locator("#answer").input_value() == "echo-base: hello there"

            # relabel, then a thumb; each redirects back to the call
            page.locator("#answer").fill("Hello! How can I help you today?")
            page.get_by_role("button", name="Save relabel").click()
            page.wait_for_url(f"**/review/calls/{call_id}?done=relabel")
            assert page.get_by_role("status").inner_text() == "Relabel saved."
            assert page.locator("#relabel-current pre").inner_text() == "Hello! How can I help you today?"
            assert page.locator('#events tr[data-kind="relabel"]').count() == 1
            page.get_by_title("thumbs up").click()
            page.wait_for_url("**?done=thumbs")
            assert page.get_by_title("thumbs up").inner_text() == "▲ Up · 1"
            page.screenshot(path=str(tmp_path / "call.png"), full_page=True)

            # the page with the <script> message renders it as text and runs nothing
            page.goto(f"{gw.url}/review/calls/{ids[QUESTIONS[2]]}")
            assert page.locator(".msg.user pre.text").inner_text() == QUESTIONS[2]
        finally:
            browser.close()

    assert dialogs == []
    got = outcome(log_dir, call_id)
    assert got is not None
    assert got["relabel"] == "Hello! How can I help you today?"
    assert (got["reviewer_thumbs_up"], got["thumbs_up"]) == (1, 0)
    keep = os.environ.get("SHADOWTUNE_SCREENSHOTS")
    if keep:
        for name in ("dashboard.png", "call.png"):
            shutil.copy(tmp_path / name, Path(keep) / name)
