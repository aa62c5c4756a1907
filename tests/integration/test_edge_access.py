"""Who may reach what (`gateway.edge`), against a real gateway over HTTP.

DNS rebinding: a page on ``evil.example`` whose name re-resolves to 127.0.0.1 reaches the
gateway from the victim's browser over loopback, with ``Host: evil.example``. Where the
gateway trusts the network instead of a key (admin API and review pages without an admin
token, the API in open mode on loopback), that ``Host`` is refused. Operational endpoints
(``/metrics``, ``/docs``, ``/openapi.json``, the ``/readyz`` detail) answer loopback and
the admin token only, unless ``server.public_endpoints`` says otherwise; a "remote" client
is this machine's own outside address, with the gateway listening on 0.0.0.0.
"""

from __future__ import annotations

import httpx
import pytest

from tests.support.servers import GatewayServer, outside_address

EVIL = {"host": "evil.example", "origin": "http://evil.example"}
TOKEN = "admin-s3cret"
MESSAGES = [{"role": "user", "content": "hi"}]


def routed(make_settings, **server):
    return make_settings(
        upstreams={"base": {"model": "echo-base"}, "cand": {"model": "echo-cand"}},
        routes={"R": {"baseline": "base", "candidate": "cand"}},
        server=server,
    )


def error_of(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.fixture
def remote(make_settings):
    """(start, base URL for a client that is not loopback): the gateway on 0.0.0.0."""
    address = outside_address()
    if address is None:
        pytest.skip("this machine has no address besides loopback")
    servers: list[GatewayServer] = []

    def start(**server) -> str:
        gw = GatewayServer(routed(make_settings, host="0.0.0.0", **server), host="0.0.0.0").start()
        servers.append(gw)
        return f"http://{address}:{gw.port}"

    yield start
    for gw in servers:
        gw.stop()


# -- DNS rebinding --------------------------------------------------------------------------
def test_a_rebound_host_cannot_change_a_route(make_settings, start_gateway):
    gw = start_gateway(routed(make_settings))
    r = httpx.patch(gw.url + "/admin/routes/R", json={"mode": "shadow"}, headers=EVIL)
    assert r.status_code == 400
    err = error_of(r)
    assert (err["type"], err["code"]) == ("invalid_request_error", "host_not_allowed")
    assert "server.allowed_hosts" in err["message"]
    for method, path in [("GET", "/admin/routes"), ("GET", "/admin/history"), ("POST", "/admin/flush")]:
        assert httpx.request(method, gw.url + path, headers=EVIL).status_code == 400, path
    route = httpx.get(gw.url + "/admin/routes/R").json()
    assert (route["mode"], route["version"]) == ("off", 0)  # nothing changed, no new version
    for host in ("localhost", f"127.0.0.1:{gw.port}", f"[::1]:{gw.port}", "LOCALHOST.:80"):
        assert httpx.get(gw.url + "/admin/routes", headers={"host": host}).status_code == 200, host


def test_a_rebound_host_cannot_read_or_post_the_review_pages(make_settings, start_gateway):
    gw = start_gateway(routed(make_settings))
    for path in ("/review", "/review/calls", "/review/calls/call_X"):
        r = httpx.get(gw.url + path, headers=EVIL)
        assert r.status_code == 400, path
        assert error_of(r)["code"] == "host_not_allowed"
    assert httpx.post(gw.url + "/review/calls/call_X/exclude", headers=EVIL).status_code == 400
    assert httpx.get(gw.url + "/review").status_code == 200


def test_in_open_mode_on_loopback_the_api_refuses_a_rebound_host(make_settings, start_gateway, fake_upstream):
    gw = start_gateway(routed(make_settings))
    body = {"model": "R", "messages": MESSAGES}
    r = httpx.post(gw.base_url + "/chat/completions", json=body, headers=EVIL)
    assert r.status_code == 400 and error_of(r)["code"] == "host_not_allowed"
    assert httpx.get(gw.base_url + "/models", headers=EVIL).status_code == 400
    feedback = {"call_id": "call_x", "kind": "thumbs", "value": "up"}
    assert httpx.post(gw.base_url + "/feedback", json=feedback, headers=EVIL).status_code == 400
    assert fake_upstream.requests == []  # the rebound page spent no upstream call
    assert httpx.get(gw.url + "/healthz", headers=EVIL).status_code == 200  # probes stay open
    assert httpx.post(gw.base_url + "/chat/completions", json=body).status_code == 200


def test_allowed_hosts_admits_the_names_configured(make_settings, start_gateway):
    gw = start_gateway(routed(make_settings, allowed_hosts=["gw.internal", "*.corp.example"]))
    ok = {"gw.internal", "gw.internal:8000", "a.corp.example", "b.a.corp.example:1"}
    refused = {"localhost", "corp.example", "evil.example", "gw.internal.evil.example", "xcorp.example"}
    for host in ok | refused:
        r = httpx.get(gw.url + "/admin/routes", headers={"host": host})
        assert r.status_code == (200 if host in ok else 400), host
    anywhere = start_gateway(routed(make_settings, allowed_hosts=["*"]))
    assert httpx.get(anywhere.url + "/admin/routes", headers=EVIL).status_code == 200


def test_with_an_admin_token_the_token_not_the_host_admits(make_settings, start_gateway):
    gw = start_gateway(routed(make_settings, admin_token=TOKEN))
    bearer = {"authorization": f"Bearer {TOKEN}"}
    r = httpx.patch(gw.url + "/admin/routes/R", json={"share": 0}, headers={**bearer, "host": "gw.internal"})
    assert r.status_code == 200
    assert httpx.patch(gw.url + "/admin/routes/R", json={"share": 0}, headers=EVIL).status_code == 401


def test_a_browser_cross_origin_state_change_to_the_admin_api_is_refused(make_settings, start_gateway):
    gw = start_gateway(routed(make_settings))
    for headers in ({"origin": "http://evil.example"}, {"origin": "null"}, {"sec-fetch-site": "cross-site"}):
        r = httpx.post(gw.url + "/admin/flush", headers=headers)
        assert r.status_code == 403, headers
        assert error_of(r)["code"] == "cross_origin"
        patch = httpx.patch(gw.url + "/admin/routes/R", json={"mode": "shadow"}, headers=headers)
        assert patch.status_code == 403
    assert httpx.get(gw.url + "/admin/routes", headers={"origin": "http://evil.example"}).status_code == 200
    same = httpx.patch(gw.url + "/admin/routes/R", json={"mode": "shadow"}, headers={"origin": gw.url})
    assert same.status_code == 200


# -- operational endpoints ------------------------------------------------------------------
def test_loopback_sees_metrics_docs_and_the_readiness_detail(make_settings, start_gateway):
    gw = start_gateway(routed(make_settings))
    assert httpx.get(gw.url + "/metrics").status_code == 200
    assert httpx.get(gw.url + "/openapi.json").json()["info"]["title"] == "Shadowtune"
    assert httpx.get(gw.url + "/docs").status_code == 200
    ready = httpx.get(gw.url + "/readyz").json()
    assert ready["status"] == "ok" and "store" in ready
    # loopback with a rebound Host is not local
    assert httpx.get(gw.url + "/metrics", headers=EVIL).status_code == 403
    assert "store" not in httpx.get(gw.url + "/readyz", headers=EVIL).json()


def test_a_remote_caller_gets_probes_but_not_metrics_docs_or_paths(remote):
    url = remote()
    for path in ("/metrics", "/docs", "/redoc", "/openapi.json"):
        r = httpx.get(url + path)
        assert r.status_code == 403, path
        err = error_of(r)
        assert (err["type"], err["code"]) == ("permission_error", "endpoint_not_public")
        assert "server.public_endpoints" in err["message"]
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(url + "/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok"}  # no store detail, no file paths
    assert httpx.get(url + "/admin/routes").status_code == 403
    assert httpx.get(url + "/review").status_code == 403


def test_the_admin_token_or_public_endpoints_open_them_to_remote_callers(remote):
    url = remote(admin_token=TOKEN)
    bearer = {"authorization": f"Bearer {TOKEN}"}
    assert httpx.get(url + "/metrics", headers=bearer).status_code == 200
    assert "store" in httpx.get(url + "/readyz", headers=bearer).json()
    assert httpx.get(url + "/metrics", headers={"authorization": "Bearer nope"}).status_code == 403
    public = remote(public_endpoints=["metrics", "readyz", "docs"])
    assert httpx.get(public + "/metrics").status_code == 200
    assert httpx.get(public + "/openapi.json").status_code == 200
    assert "store" in httpx.get(public + "/readyz").json()
