"""Client authentication: keys issued by `KeyFile` (what ``shadowtune keys`` uses), checked on
every call, revoked without a restart; the key's name, never the key, reaches the log."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from gateway.auth import KeyFile
from tests.support.calllog import row, rows

MESSAGES = [{"role": "user", "content": "hi"}]


def client_for(gw, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=10)


@pytest.fixture
def keyed(make_settings, start_gateway, log_dir):
    key = KeyFile(log_dir).create("alice")
    return start_gateway(make_settings(server={"auth": "keys"})), key


def test_a_missing_key_is_401(keyed, fake_upstream, log_dir):
    gw, _ = keyed
    resp = httpx.post(
        gw.base_url + "/chat/completions", json={"model": "echo", "messages": MESSAGES}, timeout=10
    )
    assert resp.status_code == 401
    err = resp.json()["error"]
    assert (err["type"], err["code"], err["param"]) == ("authentication_error", "missing_api_key", None)
    assert fake_upstream.requests == []
    r = row(gw, log_dir, resp.headers["x-request-id"])
    assert (r["status"], r["error_type"], r["client_key"]) == (401, "authentication_error", None)


@pytest.mark.parametrize("header", ["Bearer sk-st-wrong", "Basic dXNlcjpwYXNz", "Bearer", "sk-st-no-scheme"])
def test_an_invalid_key_is_401(keyed, fake_upstream, header):
    gw, _ = keyed
    resp = httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "echo", "messages": MESSAGES},
        headers={"Authorization": header},
        timeout=10,
    )
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "invalid_api_key"
    assert fake_upstream.requests == []


def test_the_sdk_sees_an_authentication_error(keyed):
    gw, _ = keyed
    with client_for(gw, "sk-st-not-a-key") as client, pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model="echo", messages=MESSAGES)
    assert info.value.code == "invalid_api_key"
    with client_for(gw, "sk-st-not-a-key") as client, pytest.raises(openai.AuthenticationError):
        client.embeddings.create(model="emb", input="x")
    with client_for(gw, "sk-st-not-a-key") as client, pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_a_valid_key_is_served_and_its_name_is_logged(keyed, fake_upstream, log_dir):
    gw, key = keyed
    with client_for(gw, key) as client:
        raw = client.chat.completions.with_raw_response.create(model="echo-k", messages=MESSAGES)
        assert [m.id for m in client.models.list()] == ["echo"]
    assert raw.parse().choices[0].message.content == "echo-k: hi"
    assert row(gw, log_dir, raw.headers["x-request-id"])["client_key"] == "alice"
    # the gateway's client key is ours: it is never sent on to the provider
    assert all(key not in str(r["headers"]) for r in fake_upstream.requests)


def test_a_revoked_key_stops_working_without_a_restart(keyed, log_dir):
    gw, key = keyed
    with client_for(gw, key) as client:
        client.chat.completions.create(model="echo", messages=MESSAGES)
        KeyFile(log_dir).revoke("alice")
        deadline = time.monotonic() + 5
        with pytest.raises(openai.AuthenticationError):
            while time.monotonic() < deadline:
                client.chat.completions.create(model="echo", messages=MESSAGES)
                time.sleep(0.1)
    assert "alice" in {r["client_key"] for r in rows(gw, log_dir, "status = 200")}


def test_auto_mode_is_open_until_the_first_key_exists(make_settings, start_gateway, log_dir):
    gw = start_gateway(make_settings(server={"auth": "auto"}))
    body = {"model": "echo", "messages": MESSAGES}
    assert httpx.post(gw.base_url + "/chat/completions", json=body, timeout=10).status_code == 200
    key = KeyFile(log_dir).create("bob")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if httpx.post(gw.base_url + "/chat/completions", json=body, timeout=10).status_code == 401:
            break
        time.sleep(0.1)
    else:
        pytest.fail("a key was created but auto mode still lets callers in without one")
    with client_for(gw, key) as client:
        assert client.chat.completions.create(model="echo", messages=MESSAGES).choices[0].message.content


def test_key_names_are_unique_and_only_hashes_are_stored(log_dir):
    keys = KeyFile(log_dir)
    key = keys.create("carol")
    with pytest.raises(ValueError):
        keys.create("carol")
    with open(keys.path) as f:
        stored = f.read()
    assert key not in stored
    assert "carol" in stored
    keys.revoke("carol")
    with pytest.raises(ValueError):
        keys.revoke("carol")
    assert keys.create("carol") != key  # a revoked name can be issued again


def test_the_provider_key_comes_from_the_named_environment_variable(
    make_settings, start_gateway, fake_upstream, monkeypatch
):
    monkeypatch.setenv("FAKE_PROVIDER_KEY", "sk-provider-secret-123")
    gw = start_gateway(
        make_settings(
            upstreams={"up": {"model": "echo-p", "api_key_env": "FAKE_PROVIDER_KEY"}},
            routes={"p": {"baseline": "up"}},
        )
    )
    with client_for(gw, "sk-caller-key") as client:
        client.chat.completions.create(model="p", messages=MESSAGES)
    assert fake_upstream.requests[-1]["headers"]["Authorization"] == "Bearer sk-provider-secret-123"


def test_zero_config_open_mode_forwards_the_callers_own_key_upstream(gateway, fake_upstream):
    with client_for(gateway, "sk-callers-own-openai-key") as client:
        client.chat.completions.create(model="echo", messages=MESSAGES)
    assert fake_upstream.requests[-1]["headers"].get("Authorization") == "Bearer sk-callers-own-openai-key"


def test_zero_config_with_a_key_env_sends_that_key_not_the_callers(
    make_settings, start_gateway, fake_upstream, monkeypatch
):
    monkeypatch.setenv("ZC_KEY", "sk-zero-config-key")
    gw = start_gateway(make_settings(server={"upstream_key_env": "ZC_KEY"}))
    with client_for(gw, "sk-callers-own-key") as client:
        client.chat.completions.create(model="echo", messages=MESSAGES)
    assert fake_upstream.requests[-1]["headers"]["Authorization"] == "Bearer sk-zero-config-key"
