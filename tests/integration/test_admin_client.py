"""Every operator command finds the gateway and the state the same way (`gateway.admin_client`):
``--config`` gives the URL, the admin token and the state; ``SHADOWTUNE_URL`` is honoured by all;
route names with ``/`` are URL-quoted."""

from __future__ import annotations

import json

import httpx
import pytest
import yaml
from click.testing import CliRunner

from gateway.admin_client import AdminClient, AdminError, find_target
from gateway.cli import main

TOKEN = "tok-123"


@pytest.fixture
def setup(make_settings, start_gateway, tmp_path, log_dir):
    state = str(tmp_path / "state")
    settings = make_settings(
        upstreams={"base": {"model": "echo-base"}, "cand": {"model": "echo-cand"}},
        routes={"org/model": {"baseline": "base", "candidate": "cand"}},
        server={"admin_token": TOKEN, "auth": "auto"},
        store={"state_dir": state},
    )
    gw = start_gateway(settings)
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server": {"host": "0.0.0.0", "port": gw.port, "admin_token": TOKEN},
                "store": {"log_dir": log_dir, "state_dir": state},
            }
        )
    )
    return gw, str(config), state


def run(*args, code=0, env=None):
    res = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    assert res.exit_code == code, res.output
    return res.output


def test_config_gives_the_url_and_the_token_and_route_names_may_contain_a_slash(setup):
    gw, config, _ = setup
    out = json.loads(
        run("routes", "set", "org/model", "--mode", "shadow", "--reason", "t", "--config", config)
    )
    assert (out["route"], out["mode"]) == ("org/model", "shadow")
    assert gw.ctx.routes.get("org/model").mode == "shadow"
    assert json.loads(run("routes", "show", "org/model", "--config", config))["mode"] == "shadow"
    assert "org/model" in run("routes", "list", "--config", config)
    [h] = json.loads(run("routes", "history", "org/model", "--json", "--config", config))
    assert (h["route"], h["reason"]) == ("org/model", "t")
    # a wrong token is the gateway's clear 401, not a traceback
    out = run("routes", "list", "--config", config, "--admin-token", "wrong", code=1)
    assert "401" in out and "invalid admin token" in out


def test_shadowtune_url_is_honoured_by_every_command(setup, monkeypatch, tmp_path, log_dir):
    gw, _, state = setup
    env = {"SHADOWTUNE_URL": gw.url, "SHADOWTUNE_ADMIN_TOKEN": TOKEN}
    assert "org/model" in run("routes", "list", env=env)
    decision = json.loads(
        run("controller", "run", "--route", "org/model", "--once", "--json", "--state", state, env=env)
    )
    assert decision["action"] == "idle" and decision["route_version"] == 0  # it reached this gateway
    policies = tmp_path / "policies.yaml"
    policies.write_text(yaml.safe_dump({"routes": {"org/model": {"new_examples": 1}}}))
    [plan] = json.loads(
        run(
            "triggers",
            "run",
            "--dry-run",
            "--json",
            "--policy",
            str(policies),
            "--state",
            state,
            "--log-dir",
            log_dir,
            env=env,
        )
    )
    deploy = next(s for s in plan["plan"] if s["step"] == "deploy")["target"]
    assert deploy.startswith(f"PATCH {gw.url}/admin/routes/")
    assert find_target(url=None).url == "http://127.0.0.1:8000"  # the fixture's environment has none
    monkeypatch.setenv("SHADOWTUNE_URL", gw.url + "/v1")
    assert find_target().url == gw.url


def test_keys_and_the_controller_find_the_state_through_the_config(setup):
    gw, config, state = setup
    key = run("keys", "create", "app", "--config", config).splitlines()[0]
    gw.ctx.auth.refresh()
    assert gw.ctx.auth.check(f"Bearer {key}".encode()) == "app"
    assert [k["name"] for k in json.loads(run("keys", "list", "--json", "--config", config))] == ["app"]
    run("controller", "pause", "org/model", "--reason", "holiday", "--config", config)
    status = json.loads(run("controller", "status", "org/model", "--json", "--config", config))
    assert status["state"]["paused"] is True and status["decisions"][-1]["action"] == "pause"
    from gateway.state import open_backend

    assert open_backend(state).get_doc("controller", "org/model")["paused_reason"] == "holiday"


def test_the_client_quotes_route_names_and_reports_the_gateways_errors(setup):
    gw, _, _ = setup
    with AdminClient(gw.url, TOKEN) as client:
        assert client.get_route("org/model")["baseline"] == "base"
        with pytest.raises(AdminError) as err:
            client.get_route("no/such route?")
        assert err.value.status == 404 and "does not exist" in err.value.message
        key = client.create_key("svc")
    assert (
        httpx.get(gw.url + "/admin/keys", headers={"Authorization": f"Bearer {TOKEN}"}).json()["data"][0][
            "prefix"
        ]
        == key[:10]
    )
    with AdminClient("http://127.0.0.1:9", TOKEN) as client, pytest.raises(AdminError) as err:
        client.routes()
    assert err.value.status == 0 and "cannot reach the gateway" in err.value.message


ODD = "org/model?v=2 #b"
"""A route name that only works quoted: ``?`` and ``#`` would end the path, ``/`` splits it."""


@pytest.fixture
def odd_routes(make_settings, start_gateway, tmp_path, log_dir):
    settings = make_settings(
        upstreams={"base": {"model": "echo-base"}, "cand": {"model": "echo-cand"}},
        routes={
            "org/model": {"baseline": "base", "candidate": "cand"},
            "org": {"baseline": "base"},  # what an unquoted "org/model?v=2" would hit first
            ODD: {"baseline": "base", "candidate": "cand"},
        },
        server={"admin_token": TOKEN, "auth": "auto"},
        store={"state_dir": str(tmp_path / "state")},
    )
    return start_gateway(settings)


def test_route_names_are_quoted_by_every_command_that_administers_them(
    odd_routes, log_dir, tmp_path, monkeypatch
):
    gw = odd_routes
    env = {"SHADOWTUNE_URL": gw.url, "SHADOWTUNE_ADMIN_TOKEN": TOKEN}
    for route in ("org/model", ODD):
        out = json.loads(run("routes", "set", route, "--mode", "shadow", "--reason", "q", "--json", env=env))
        assert (out["route"], out["mode"]) == (route, "shadow")
        assert gw.ctx.routes.get(route).mode == "shadow"
        assert json.loads(run("routes", "show", route, env=env))["route"] == route
        [h] = json.loads(run("routes", "history", route, "--json", env=env))
        assert h["route"] == route
    assert gw.ctx.routes.get("org").mode == "off"  # nothing reached the wrong route

    # models deploy: SHADOWTUNE_URL and the admin token from the environment, the route quoted
    from trainer.registry import Registry

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    mv = Registry(log_dir).register("ex", base_model="base-model", kind="lora", adapter_path=str(adapter))
    for route in ("org/model", ODD):
        dep = json.loads(
            run(
                "models", "deploy", mv.version, "--route", route, "--serve-url", gw.url + "/v1",
                "--upstream", f"up {route}", "--json", "--log-dir", log_dir, env=env,
            )
        )  # fmt: skip
        assert dep["gateway"] == gw.url and dep["route_state"]["route"] == route
        assert gw.ctx.routes.get(route).candidate == f"up {route}"
        assert f"up {route}" in gw.ctx.routes.snapshot.upstreams

    # the trigger steps and the eval lookups read the route through the same client
    from types import SimpleNamespace

    from evals import _lookups
    from evals.retrain import steps

    monkeypatch.setenv("SHADOWTUNE_ADMIN_TOKEN", TOKEN)
    state = steps._route_state(SimpleNamespace(route=ODD), {"gateway_url": gw.url})
    assert state is not None and state["route"] == ODD
    _, models = _lookups.gateway_families(gw.url, TOKEN)
    assert models["base"] == "echo-base"


def test_commands_that_call_the_gateway_report_its_errors_in_one_line(odd_routes, log_dir):
    gw = odd_routes
    for args in (
        ["routes", "show", "no/such?route"],
        ["routes", "set", "no/such?route", "--mode", "shadow"],
        ["routes", "history", "org/model", "--admin-token", "wrong"],
    ):
        out = (
            run(*args, "--url", gw.url, "--admin-token", TOKEN, code=1)
            if "--admin-token" not in args
            else run(*args, "--url", gw.url, code=1)
        )
        assert out.startswith("Error: ") and len(out.strip().splitlines()) == 1, out
    assert "does not exist" in run(
        "routes", "show", "no/such?route", "--url", gw.url, "--admin-token", TOKEN, code=1
    )
    down = run("feedback", "add", "call_x", "thumbs", "up", "--url", "http://127.0.0.1:9", code=1)
    assert "cannot reach the gateway at http://127.0.0.1:9" in down


def test_feedback_add_prints_json_and_reaches_the_log(odd_routes, log_dir):
    gw = odd_routes
    reply = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "org/model", "messages": [{"role": "user", "content": "hi"}]},
    )
    call_id = reply.headers["x-request-id"]
    env = {"SHADOWTUNE_URL": gw.url}
    posted = json.loads(
        run("feedback", "add", call_id, "rating", "4", "--comment", "ok", "--user", "ann", "--json", env=env)
    )
    assert posted["id"].startswith("evt_")
    assert run("feedback", "add", call_id, "thumbs", "up", env=env).strip().startswith("evt_")
    gw.flush()
    shown = json.loads(run("logs", "show", call_id, "--json", "--log-dir", gw.ctx.settings.store.log_dir))
    kinds = [(e["kind"], e["comment"], e["poster"]) for e in shown["feedback"]]
    assert [k[0] for k in kinds] == ["rating", "thumbs"] and kinds[0] == ("rating", "ok", "user ann")
