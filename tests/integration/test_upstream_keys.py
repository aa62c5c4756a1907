"""Provider keys from the environment, through a real gateway to the fake upstream.

A trailing newline in the variable (``export KEY=$(cat key.txt)``) no longer breaks every
call; zero-config with gateway keys but no ``--upstream-key-env`` says why the upstream
answers 401 (in the error, and in a warning at start)."""

from __future__ import annotations

import logging

import httpx

from gateway.auth import KeyFile
from tests.support.calllog import row

MESSAGES = [{"role": "user", "content": "hi"}]


def test_a_key_with_a_trailing_newline_reaches_the_upstream_stripped(
    make_settings, start_gateway, fake_upstream, monkeypatch
):
    monkeypatch.setenv("EI_PROVIDER_KEY", "sk-provider-123\n")
    gw = start_gateway(make_settings(server={"upstream_key_env": "EI_PROVIDER_KEY"}))
    r = httpx.post(
        gw.base_url + "/chat/completions", json={"model": "echo", "messages": MESSAGES}, timeout=10
    )
    assert r.status_code == 200
    assert fake_upstream.requests[-1]["headers"]["Authorization"] == "Bearer sk-provider-123"
    models = httpx.get(gw.base_url + "/models", timeout=10)  # was a 500 with a header-injection traceback
    assert models.status_code == 200
    assert models.json()["data"][0]["id"] == "echo"


def test_zero_config_with_gateway_keys_but_no_upstream_key_says_why_the_upstream_refuses(
    make_settings, start_gateway, fake_upstream, log_dir, caplog
):
    caplog.set_level(logging.WARNING, logger="shadowtune")
    key = KeyFile(log_dir).create("app")  # `shadowtune keys create app`: auth auto leaves open mode
    gw = start_gateway(make_settings(server={"auth": "auto"}))
    assert "zero-config without --upstream-key-env" in caplog.text
    headers = {"authorization": f"Bearer {key}"}
    body = {"model": "error-401", "messages": MESSAGES}
    r = httpx.post(gw.base_url + "/chat/completions", json=body, headers=headers, timeout=10)
    assert r.status_code == 401
    err = r.json()["error"]
    assert (err["type"], err["code"]) == ("authentication_error", "upstream_key_missing")
    assert "--upstream-key-env" in err["message"]
    assert "authorization" not in {h.lower() for h in fake_upstream.requests[-1]["headers"]}
    assert key not in r.text
    logged = row(gw, log_dir, r.headers["x-request-id"])
    assert (logged["status"], logged["error_message"]) == (401, err["message"])


def test_an_upstream_401_to_a_key_that_was_sent_passes_through_unchanged(
    make_settings, start_gateway, fake_upstream, monkeypatch
):
    monkeypatch.setenv("EI_PROVIDER_KEY", "sk-provider-123")
    gw = start_gateway(make_settings(server={"upstream_key_env": "EI_PROVIDER_KEY"}))
    r = httpx.post(gw.base_url + "/chat/completions", json={"model": "error-401", "messages": MESSAGES})
    assert r.status_code == 401
    assert r.json()["error"]["message"] == "scripted 401"  # the upstream's own reason


def test_an_upstream_whose_key_variable_is_unset_names_the_variable(
    make_settings, start_gateway, monkeypatch, caplog
):
    caplog.set_level(logging.WARNING, logger="shadowtune")
    monkeypatch.delenv("EI_UNSET_KEY", raising=False)
    gw = start_gateway(
        make_settings(
            upstreams={"base": {"model": "error-401", "api_key_env": "EI_UNSET_KEY"}},
            routes={"bot": {"baseline": "base"}},
        )
    )
    assert "upstream 'base': the environment variable EI_UNSET_KEY (its key) is not set" in caplog.text
    r = httpx.post(gw.base_url + "/chat/completions", json={"model": "bot", "messages": MESSAGES})
    assert r.status_code == 401
    assert "EI_UNSET_KEY" in r.json()["error"]["message"]
