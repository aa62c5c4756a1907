"""Operator control of a running gateway: the admin API (``/admin/routes...``) and the
``shadowtune routes`` commands that call it. Changes are validated (nothing applied on
error), persisted across restarts, audited, and need the admin token when one is set."""

from __future__ import annotations

import json

import httpx
import pytest
from click.testing import CliRunner

from gateway.cli import main

TOKEN = "admin-s3cret"
MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def settings(make_settings):
    def make(**sections):
        return make_settings(
            upstreams={
                "base": {"model": "echo-base"},
                "cand": {"model": "echo-cand"},
                "cand2": {"model": "echo-cand2"},
            },
            routes={
                "bot": {"baseline": "base", "candidate": "cand", "mode": "shadow"},
                "solo": {"baseline": "base"},
            },
            **sections,
        )

    return make


@pytest.fixture
def gw(settings, start_gateway):
    return start_gateway(settings())


def served_by(gw, route="bot", user="u1") -> str:
    r = httpx.post(gw.base_url + "/chat/completions", json={"model": route, "messages": MSG, "user": user})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"].split(":", 1)[0]


def cli(*args, env=None):
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result


class TestAdminAPI:
    def test_routes_are_listed_and_shown(self, gw):
        listing = httpx.get(gw.url + "/admin/routes").json()
        assert listing["version"] == 0
        assert [(r["route"], r["mode"], r["candidate"]) for r in listing["data"]] == [
            ("bot", "shadow", "cand"),
            ("solo", "off", None),
        ]
        bot = httpx.get(gw.url + "/admin/routes/bot").json()
        assert (bot["baseline"], bot["candidate"], bot["mode"], bot["share"], bot["version"]) == (
            "base",
            "cand",
            "shadow",
            0.0,
            0,
        )
        missing = httpx.get(gw.url + "/admin/routes/nope")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "route_not_found"

    def test_a_change_applies_at_once_and_is_audited(self, gw):
        assert served_by(gw) == "echo-base"
        r = httpx.patch(
            gw.url + "/admin/routes/bot",
            json={"mode": "primary", "shadow_rate": 0, "reason": "ticket 123", "actor": "alice"},
        )
        assert r.status_code == 200, r.text
        assert (r.json()["mode"], r.json()["version"]) == ("primary", 1)
        assert served_by(gw) == "echo-cand"
        [entry] = httpx.get(gw.url + "/admin/routes/bot/history").json()["data"]
        assert (entry["actor"], entry["reason"], entry["version"], entry["route"]) == (
            "alice",
            "ticket 123",
            1,
            "bot",
        )
        assert entry["before"]["mode"] == "shadow"
        assert (entry["after"]["mode"], entry["after"]["shadow_rate"]) == ("primary", 0)
        assert entry["ts"] > 0

    def test_put_creates_a_route(self, gw):
        r = httpx.put(
            gw.url + "/admin/routes/new-bot",
            json={"baseline": "base", "candidate": "cand2", "mode": "primary"},
        )
        assert r.status_code == 200, r.text
        assert served_by(gw, route="new-bot") == "echo-cand2"

    @pytest.mark.parametrize(
        ("route", "change", "param", "words"),
        [
            ("bot", {"candidate": "gpt-unknown"}, "candidate", "unknown upstream model 'gpt-unknown'"),
            ("bot", {"baseline": "nope"}, "baseline", "unknown upstream model 'nope'"),
            ("bot", {"mode": "canary", "share": 150}, "share", "between 0 and 100"),
            ("bot", {"share": -5}, "share", "between 0 and 100"),
            ("bot", {"share": "ten"}, "share", "share"),
            ("bot", {"shadow_rate": 2}, "shadow_rate", "between 0 and 1"),
            ("bot", {"mode": "sideways"}, "mode", "mode must be one of"),
            ("bot", {"volume": 11}, "volume", "unknown route field"),
            ("solo", {"mode": "canary", "share": 10}, "candidate", "needs a candidate"),
            ("bot", {"candidate": None}, "candidate", "needs a candidate"),
        ],
    )
    def test_an_invalid_change_is_a_clear_400_and_nothing_is_applied(self, gw, route, change, param, words):
        before = httpx.get(gw.url + f"/admin/routes/{route}").json()
        r = httpx.patch(gw.url + f"/admin/routes/{route}", json={**change, "reason": "oops"})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error"
        assert err["param"] == param
        assert words in err["message"]
        assert httpx.get(gw.url + f"/admin/routes/{route}").json() == before
        assert httpx.get(gw.url + "/admin/history").json()["data"] == []
        assert served_by(gw) == "echo-base"

    def test_a_body_that_is_not_a_json_object_is_a_400(self, gw):
        for content in (b"not json", b"[1, 2]"):
            r = httpx.patch(
                gw.url + "/admin/routes/bot", content=content, headers={"content-type": "application/json"}
            )
            assert r.status_code == 400
            assert r.json()["error"]["type"] == "invalid_request_error"

    def test_the_state_survives_a_restart(self, settings, start_gateway):
        first = start_gateway(settings())
        httpx.patch(first.url + "/admin/routes/bot", json={"mode": "canary", "share": 100, "reason": "go"})
        first.stop()
        second = start_gateway(settings())  # the config still says shadow: the saved state wins
        bot = httpx.get(second.url + "/admin/routes/bot").json()
        assert (bot["mode"], bot["share"], bot["version"]) == ("canary", 100, 1)
        assert served_by(second) == "echo-cand"
        assert [h["reason"] for h in httpx.get(second.url + "/admin/history").json()["data"]] == ["go"]

    def test_the_admin_token_is_required_when_configured(self, settings, start_gateway):
        gw = start_gateway(settings(server={"admin_token": TOKEN}))
        assert httpx.get(gw.url + "/admin/routes").status_code == 401
        wrong = httpx.patch(
            gw.url + "/admin/routes/bot", json={"mode": "off"}, headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "invalid_admin_token"
        assert httpx.get(gw.url + "/admin/routes/bot").json()["error"]["code"] == "invalid_admin_token"
        assert httpx.get(gw.url + "/admin/routes/bot").status_code == 401
        assert httpx.get(gw.url + "/admin/history").status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert (
            httpx.get(gw.url + "/admin/routes/bot", headers=auth).json()["mode"] == "shadow"
        )  # nothing applied
        ok = httpx.patch(gw.url + "/admin/routes/bot", json={"mode": "off"}, headers=auth)
        assert ok.status_code == 200
        [entry] = httpx.get(gw.url + "/admin/history", headers=auth).json()["data"]
        assert entry["actor"] == "admin"
        # the user-facing API does not take the admin token's place nor need it
        assert served_by(gw) == "echo-base"


class TestRoutesCommand:
    def test_list_and_show(self, gw):
        result = cli("routes", "list", "--url", gw.url)
        assert result.exit_code == 0, result.output
        assert "version 0" in result.output
        assert "bot" in result.output and "shadow" in result.output and "candidate=cand" in result.output
        data = json.loads(cli("routes", "list", "--url", gw.url, "--json").output)
        assert [r["route"] for r in data["data"]] == ["bot", "solo"]
        shown = json.loads(cli("routes", "show", "bot", "--url", gw.url).output)
        assert (shown["mode"], shown["candidate"]) == ("shadow", "cand")

    def test_set_changes_the_running_gateway_and_history_shows_who_and_why(self, gw, monkeypatch):
        monkeypatch.setenv("USER", "carol")
        result = cli(
            "routes",
            "set",
            "bot",
            "--mode",
            "canary",
            "--share",
            "100",
            "--reason",
            "ticket 123",
            "--url",
            gw.url,
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["mode"] == "canary"
        assert served_by(gw) == "echo-cand"

        text = cli("routes", "history", "bot", "--url", gw.url)
        assert text.exit_code == 0, text.output
        assert "by carol" in text.output
        assert "mode: shadow -> canary" in text.output
        assert "share: 0.0 -> 100.0" in text.output
        assert "ticket 123" in text.output
        [entry] = json.loads(cli("routes", "history", "--url", gw.url, "--json").output)
        assert (entry["actor"], entry["reason"], entry["before"]["mode"], entry["after"]["share"]) == (
            "carol",
            "ticket 123",
            "shadow",
            100,
        )

    def test_set_reports_a_validation_error_and_changes_nothing(self, gw):
        result = cli("routes", "set", "bot", "--candidate", "gpt-unknown", "--url", gw.url)
        assert result.exit_code == 1
        assert "400: unknown upstream model 'gpt-unknown' (candidate)" in result.output
        result = cli("routes", "set", "solo", "--mode", "primary", "--url", gw.url)
        assert result.exit_code == 1
        assert "needs a candidate" in result.output
        result = cli("routes", "set", "bot", "--share", "250", "--url", gw.url)
        assert result.exit_code == 1
        assert "(share)" in result.output
        assert json.loads(cli("routes", "show", "bot", "--url", gw.url).output)["version"] == 0

    def test_set_without_a_change_is_a_usage_error(self, gw):
        result = cli("routes", "set", "bot", "--url", gw.url)
        assert result.exit_code == 2
        assert "nothing to change" in result.output

    def test_the_admin_token_comes_from_the_environment(self, settings, start_gateway):
        gw = start_gateway(settings(server={"admin_token": TOKEN}))
        denied = cli("routes", "set", "bot", "--mode", "off", "--url", gw.url)
        assert denied.exit_code == 1
        assert "401" in denied.output
        ok = cli(
            "routes", "set", "bot", "--mode", "off", "--url", gw.url, env={"SHADOWTUNE_ADMIN_TOKEN": TOKEN}
        )
        assert ok.exit_code == 0, ok.output
        flagged = cli("routes", "show", "bot", "--url", gw.url, "--admin-token", TOKEN)
        assert json.loads(flagged.output)["mode"] == "off"

    def test_an_unreachable_gateway_is_a_clear_error(self):
        result = cli("routes", "list", "--url", "http://127.0.0.1:9")
        assert result.exit_code == 1
        assert "cannot reach the gateway at http://127.0.0.1:9" in result.output


def test_routes_cli_reads_the_admin_token_from_the_config_file(make_settings, start_gateway, tmp_path):
    import yaml as _yaml
    from click.testing import CliRunner as _Runner

    from gateway.cli import main as _main

    settings = make_settings(
        server={"admin_token": "s3cret"},
        upstreams={"base": {"model": "echo-base"}},
        routes={"bot": {"baseline": "base"}},
    )
    gw = start_gateway(settings)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(_yaml.safe_dump({"server": {"admin_token": "s3cret"}}))
    denied = _Runner().invoke(_main, ["routes", "list", "--url", gw.url])
    assert denied.exit_code != 0 and "401" in denied.output
    ok = _Runner().invoke(_main, ["routes", "list", "--url", gw.url, "--config", str(cfg), "--json"])
    assert ok.exit_code == 0, ok.output
    assert [r["route"] for r in __import__("json").loads(ok.stdout)["data"]] == ["bot"]


def test_orphan_feedback_is_reported_not_lost(gateway, log_dir):
    import json as _json

    import httpx as _httpx
    from click.testing import CliRunner as _Runner

    from gateway.cli import main as _main

    r = _httpx.post(
        gateway.url + "/v1/feedback", json={"call_id": "call_nobody", "kind": "thumbs", "value": "up"}
    )
    assert r.status_code == 200
    gateway.flush()
    res = _Runner().invoke(_main, ["feedback", "orphans", "--window", "0s", "--log-dir", log_dir, "--json"])
    assert res.exit_code == 0, res.output
    assert [o["call_id"] for o in _json.loads(res.stdout)] == ["call_nobody"]
    fresh = _Runner().invoke(_main, ["feedback", "orphans", "--window", "1h", "--log-dir", log_dir, "--json"])
    assert _json.loads(fresh.stdout) == []
