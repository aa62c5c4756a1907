"""Stored responses through the gateway (`gateway.stored_responses`), with the official ``openai``
SDK: ``responses.retrieve`` (also streamed), ``responses.delete``, ``responses.input_items.list``
(paginated) and ``responses.cancel`` reach the upstream that created the response — a second
fake upstream plays the candidate — whatever the route's state is now; an unknown id, a
deleted one and another caller's answer OpenAI's 404; bad query parameters a 400; the edge's
rules hold; nothing of it enters the call log."""

from __future__ import annotations

import contextlib

import httpx
import openai
import pytest

from gateway.auth import KeyFile
from tests.support.calllog import rows, wait_for_rows
from tests.support.fake_upstream import FakeUpstream

TIMEOUT = 20


def client_for(gw, key: str = "sk-test") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=TIMEOUT)


@pytest.fixture
def cand_upstream():
    up = FakeUpstream().start()
    yield up
    with contextlib.suppress(RuntimeError):  # a test may have stopped it already
        up.stop()


@pytest.fixture
def routed(make_settings, start_gateway, cand_upstream):
    """Route ``bot``: baseline ``base`` (the usual fake), candidate ``cand`` (its own fake); no passthrough."""

    def start(mode: str = "canary", share: float = 100, **extra):
        settings = make_settings(
            server={"passthrough_url": None, **extra.pop("server", {})},
            upstreams={
                "base": {"model": "base-model"},
                "cand": {"model": "cand-model", "base_url": cand_upstream.base_url},
            },
            routes={"bot": {"baseline": "base", "candidate": "cand", "mode": mode, "share": share, **extra}},
        )
        return start_gateway(settings)

    return start


def gets(up: FakeUpstream) -> list[tuple[str, str]]:
    return [(q["method"], q["path"]) for q in up.requests if q.get("method")]


def test_retrieve_input_items_and_delete_go_to_the_upstream_that_created_the_response(
    routed, fake_upstream, cand_upstream, log_dir
):
    gw = routed()
    with client_for(gw) as client:
        created = client.responses.create(
            model="bot",
            input=[
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "second"},
            ],
            user="alice",
        )
        assert created.output_text == "cand-model: second"
        got = client.responses.retrieve(created.id)
        assert (got.id, got.output_text) == (created.id, "cand-model: second")
        page = client.responses.input_items.list(created.id, limit=2, order="asc")
        assert [i.content[0].text for i in page.data] == ["first", "ok"]
        assert page.has_more is True
        rest = client.responses.input_items.list(created.id, limit=2, order="asc", after=page.data[-1].id)
        assert [i.content[0].text for i in rest.data] == ["second"] and rest.has_more is False
        everything = [i.id for i in client.responses.input_items.list(created.id, limit=1)]  # auto-paging
        assert len(everything) == 3
        client.responses.delete(created.id)
        with pytest.raises(openai.NotFoundError) as gone:
            client.responses.retrieve(created.id)
    err = gone.value.body
    assert err == {
        "message": f"Response with id '{created.id}' not found.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    assert gets(fake_upstream) == []  # the baseline never saw any of it
    assert ("GET", f"/v1/responses/{created.id}") in gets(cand_upstream)
    assert ("DELETE", f"/v1/responses/{created.id}") in gets(cand_upstream)
    assert next(q for q in cand_upstream.requests if q["path"].endswith("/input_items"))["query"] == [
        ("limit", "2"),
        ("order", "asc"),
    ]
    assert created.id not in cand_upstream.stored
    # the call log holds the model call only: retrieve, list and delete are not calls
    logged = wait_for_rows(gw, log_dir, "endpoint = 'responses'", 1)
    assert [(r["variant"], r["response_id"]) for r in logged] == [("candidate", created.id)]
    assert len(rows(gw, log_dir, "true")) == 1


def test_a_rolled_back_route_still_reads_the_candidates_response_from_the_candidate(routed, cand_upstream):
    gw = routed()
    with client_for(gw) as client:
        created = client.responses.create(model="bot", input="keep me", user="bob")
        admin = httpx.patch(gw.url + "/admin/routes/bot", json={"mode": "off"}, timeout=TIMEOUT)
        assert admin.status_code == 200, admin.text
        assert client.responses.retrieve(created.id).output_text == "cand-model: keep me"
    assert gets(cand_upstream)[-1] == ("GET", f"/v1/responses/{created.id}")


def test_an_unknown_id_is_openais_404_and_goes_nowhere(routed, fake_upstream, cand_upstream):
    gw = routed()
    with client_for(gw) as client:
        for call in (
            lambda: client.responses.retrieve("resp_never_seen"),
            lambda: client.responses.delete("resp_never_seen"),
            lambda: client.responses.input_items.list("resp_never_seen"),
            lambda: client.responses.cancel("resp_never_seen"),
        ):
            with pytest.raises(openai.NotFoundError) as missing:
                call()
            assert missing.value.body["message"] == "Response with id 'resp_never_seen' not found."
    weird = httpx.get(gw.base_url + "/responses/%00%0d%0a%ff%20x", timeout=TIMEOUT)
    assert weird.status_code == 404 and set(weird.json()["error"]) == {"message", "type", "param", "code"}
    assert gets(fake_upstream) == [] and gets(cand_upstream) == []


def test_zero_config_sends_an_unknown_id_to_its_one_upstream(gateway, fake_upstream):
    with client_for(gateway) as client:
        made = client.responses.create(model="echo-z", input="made upstream")
        fake_upstream.stored["resp_made_elsewhere"] = fake_upstream.stored[made.id]
        assert client.responses.retrieve(made.id).output_text == "echo-z: made upstream"
        assert client.responses.retrieve("resp_made_elsewhere").id == made.id  # the fake's copy
        with pytest.raises(openai.NotFoundError) as missing:
            client.responses.retrieve("resp_nobody_has")
    assert missing.value.body["message"] == "Response with id 'resp_nobody_has' not found."
    assert fake_upstream.requests[-1]["headers"]["Authorization"] == "Bearer sk-test"  # the caller's key


def test_a_streamed_retrieve_relays_the_events(routed):
    gw = routed()
    with client_for(gw) as client:
        created = client.responses.create(model="bot", input="again", user="carol")
        events = list(client.responses.retrieve(created.id, stream=True))
        later = list(client.responses.retrieve(created.id, stream=True, starting_after=0))
    assert [e.type for e in events] == ["response.created", "response.completed"]
    assert events[-1].response.output_text == "cand-model: again"
    assert [e.type for e in later] == ["response.completed"]


def test_cancel_a_background_response(routed, cand_upstream):
    gw = routed()
    with client_for(gw) as client:
        queued = client.responses.create(model="bot", input="later", background=True, user="dan")
        assert queued.status == "queued"
        cancelled = client.responses.cancel(queued.id)
        assert cancelled.status == "cancelled"
        with pytest.raises(openai.BadRequestError):  # the upstream's own 400, relayed
            client.responses.cancel(client.responses.create(model="bot", input="done", user="dan").id)
    assert ("POST", f"/v1/responses/{queued.id}/cancel") in gets(cand_upstream)


def test_bad_query_parameters_and_methods_are_clear_4xx(routed):
    gw = routed()
    with client_for(gw) as client:
        rid = client.responses.create(model="bot", input="q", user="erin").id
    url = f"{gw.base_url}/responses/{rid}"
    for query, param in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=99999999999999999999", "limit"),
        ("limit=x", "limit"),
        ("order=sideways", "order"),
    ]:
        r = httpx.get(f"{url}/input_items?{query}", timeout=TIMEOUT)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (query, r.text)
    for query, param in [("stream=yes", "stream"), ("starting_after=-1", "starting_after")]:
        r = httpx.get(f"{url}?{query}", timeout=TIMEOUT)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (query, r.text)
    put = httpx.put(url, json={}, timeout=TIMEOUT)
    assert put.status_code == 405 and put.headers["allow"] == "GET, DELETE"
    assert httpx.get(url + "/cancel", timeout=TIMEOUT).status_code == 405
    bad_body = httpx.post(url + "/cancel", content=b"{not json", timeout=TIMEOUT)
    assert bad_body.status_code == 400
    assert httpx.get(url + "/input_items?limit=1&order=desc", timeout=TIMEOUT).status_code == 200


def test_keys_scope_stored_responses_to_their_caller(routed, log_dir):
    files = KeyFile(log_dir)
    alice, bob = files.create("alice"), files.create("bob")
    gw = routed(server={"auth": "keys"})
    with client_for(gw, alice) as client:
        rid = client.responses.create(model="bot", input="mine", user="alice").id
        assert client.responses.retrieve(rid).id == rid
    with client_for(gw, bob) as client:
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(rid)
        with pytest.raises(openai.NotFoundError):
            client.responses.delete(rid)
    with client_for(gw, "sk-wrong") as client, pytest.raises(openai.AuthenticationError):
        client.responses.retrieve(rid)
    with client_for(gw, alice) as client:
        assert client.responses.retrieve(rid).id == rid  # bob's delete did not reach it


def test_the_hosts_rule_applies(routed):
    gw = routed()
    with client_for(gw) as client:
        rid = client.responses.create(model="bot", input="h", user="f").id
    r = httpx.get(f"{gw.base_url}/responses/{rid}", headers={"Host": "evil.example"}, timeout=TIMEOUT)
    assert r.status_code == 400 and r.json()["error"]["code"] == "host_not_allowed"


def test_ids_of_routes_without_bodies_are_remembered_too(routed, cand_upstream):
    gw = routed(store_bodies=False)
    with client_for(gw) as client:
        rid = client.responses.create(model="bot", input="secret text", user="g").id
        streamed = list(client.responses.create(model="bot", input="s", user="g", stream=True))
        sid = streamed[-1].response.id
        assert client.responses.retrieve(rid).output_text == "cand-model: secret text"
        assert client.responses.retrieve(sid).id == sid


def test_an_upstream_gone_at_retrieval_is_a_generic_502(routed, cand_upstream):
    gw = routed()
    with client_for(gw) as client:
        rid = client.responses.create(model="bot", input="then gone", user="h").id
    cand_upstream.stop()
    r = httpx.get(f"{gw.base_url}/responses/{rid}", timeout=TIMEOUT)
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["type"] == "upstream_error" and "127.0.0.1" not in err["message"]
    assert r.headers["x-request-id"] in err["message"]
