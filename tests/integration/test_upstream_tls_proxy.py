"""The hot path's HTTP/1.1 client behind proxies and with private TLS: ``HTTPS_PROXY`` (a
``CONNECT`` tunnel), ``HTTP_PROXY`` (absolute-form requests), ``NO_PROXY``, a per-upstream
``ca_file``, client certificates (mTLS), and certificate failures reported as such, once.

Everything is real: a proxy on loopback (`tests.support.proxy`), a CA made in the test
(`tests.support.tls`) and the fake upstream served over TLS with its certificate."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.support.calllog import row
from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import Proxy
from tests.support.tls import Authority, make_authority

MESSAGES = [{"role": "user", "content": "over tls"}]


@pytest.fixture(autouse=True)
def _no_ambient_proxy(monkeypatch):
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)


@pytest.fixture
def authority(tmp_path) -> Authority:
    return make_authority(tmp_path / "pki")


@pytest.fixture
def tls_upstream(authority):
    up = FakeUpstream(authority.server_context()).start()
    yield up
    up.stop()


@pytest.fixture
def mtls_upstream(authority):
    up = FakeUpstream(authority.server_context(require_client_cert=True)).start()
    yield up
    up.stop()


@pytest.fixture
def proxy():
    p = Proxy().start()
    yield p
    p.stop()


def post(gw, stream: bool = False) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=30) as client:  # the test's own calls never use the proxy
        return client.post(
            gw.base_url + "/chat/completions", json={"model": "r", "messages": MESSAGES, "stream": stream}
        )


def gateway_for(make_settings, start_gateway, **upstream):
    settings = make_settings(
        upstreams={"up": {"model": "echo-tls", **upstream}}, routes={"r": {"baseline": "up"}}
    )
    return start_gateway(settings)


@pytest.mark.parametrize("stream", [False, True])
def test_a_private_ca_file_verifies_the_upstream(
    make_settings, start_gateway, authority, tls_upstream, stream
):
    gw = gateway_for(make_settings, start_gateway, base_url=tls_upstream.base_url, ca_file=authority.ca_file)
    resp = post(gw, stream)
    assert resp.status_code == 200
    if stream:
        events = [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: {")]
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    else:
        text = resp.json()["choices"][0]["message"]["content"]
    assert text == "echo-tls: over tls"
    assert tls_upstream.requests[-1]["path"] == "/v1/chat/completions"


def test_an_untrusted_certificate_is_reported_as_a_tls_error_and_not_retried(
    make_settings, start_gateway, tls_upstream, proxy, log_dir, monkeypatch
):
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)  # the proxy counts the attempts: one CONNECT each
    gw = gateway_for(make_settings, start_gateway, base_url=tls_upstream.base_url, retries=2)
    resp = post(gw)
    assert resp.status_code == 502
    err = resp.json()["error"]
    assert (err["type"], err["code"]) == ("upstream_error", "upstream_tls_error")
    assert len(proxy.requests) == 1  # a certificate failure does not heal in a second: no retry
    r = row(gw, log_dir, resp.headers["x-request-id"])
    assert "CERTIFICATE_VERIFY_FAILED" in r["error_message"] or "certificate" in r["error_message"]
    assert tls_upstream.requests == []


def test_a_client_certificate_is_sent_for_mtls(make_settings, start_gateway, authority, mtls_upstream):
    gw = gateway_for(
        make_settings,
        start_gateway,
        base_url=mtls_upstream.base_url,
        ca_file=authority.ca_file,
        cert_file=authority.client_cert,
        key_file=authority.client_key,
    )
    resp = post(gw)
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == "echo-tls: over tls"


def test_without_the_client_certificate_mtls_fails_as_a_502(
    make_settings, start_gateway, authority, mtls_upstream
):
    gw = gateway_for(
        make_settings, start_gateway, base_url=mtls_upstream.base_url, ca_file=authority.ca_file, retries=0
    )
    resp = post(gw)
    assert resp.status_code == 502
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
    assert mtls_upstream.requests == []
    assert httpx.get(gw.url + "/healthz", timeout=10).status_code == 200


def test_https_goes_through_a_connect_tunnel(
    make_settings, start_gateway, authority, tls_upstream, monkeypatch
):
    proxy = Proxy(auth="gw:proxy-pw").start()
    try:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        gw = gateway_for(
            make_settings, start_gateway, base_url=tls_upstream.base_url, ca_file=authority.ca_file
        )
        for stream in (False, True):
            assert post(gw, stream).status_code == 200
        assert proxy.requests[0] == f"CONNECT 127.0.0.1:{tls_upstream.port}"
        assert proxy.auth_seen[0] is not None and proxy.auth_seen[0].startswith("Basic ")
        assert len(tls_upstream.requests) == 2
    finally:
        proxy.stop()


def test_http_goes_through_the_proxy_in_absolute_form(
    make_settings, start_gateway, fake_upstream, proxy, monkeypatch
):
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    gw = gateway_for(make_settings, start_gateway)
    resp = post(gw)
    assert resp.status_code == 200
    assert proxy.requests[0] == f"POST {fake_upstream.base_url}/chat/completions"
    assert fake_upstream.requests[-1]["body"]["model"] == "echo-tls"


def test_no_proxy_bypasses_the_proxy(make_settings, start_gateway, fake_upstream, proxy, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    gw = gateway_for(make_settings, start_gateway)
    assert post(gw).status_code == 200
    assert proxy.requests == []


def test_a_proxy_refusing_the_tunnel_is_a_502_without_its_password(
    make_settings, start_gateway, tls_upstream, log_dir, monkeypatch
):
    proxy = Proxy(auth="gw:right-pw").start()
    try:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url.replace("right-pw", "wrong-pw-777"))
        gw = gateway_for(make_settings, start_gateway, base_url=tls_upstream.base_url, retries=0)
        resp = post(gw)
        assert resp.status_code == 502
        r = row(gw, log_dir, resp.headers["x-request-id"])
        assert "407" in r["error_message"]
        assert "wrong-pw-777" not in resp.text + str(r)
    finally:
        proxy.stop()


def test_a_connect_timeout_states_the_real_limit(make_settings, start_gateway, log_dir, monkeypatch):
    hang = Proxy(blackhole=True).start()  # accepts, never answers CONNECT: the connection never comes up
    try:
        monkeypatch.setenv("HTTPS_PROXY", hang.url)
        gw = gateway_for(make_settings, start_gateway, base_url="https://127.0.0.1:9/v1", timeout=0.7)
        resp = post(gw)
        assert resp.status_code == 504
        err = resp.json()["error"]
        assert err["code"] == "upstream_connect_timeout"
        assert "0.7s" in err["message"] and "120" not in err["message"]
        assert "0.7s" in row(gw, log_dir, resp.headers["x-request-id"])["error_message"]
    finally:
        hang.stop()
