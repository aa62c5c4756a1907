"""``POST /v1/embeddings`` and ``GET /v1/models`` (the model names a caller may use)."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.calllog import request, response, row


def client_for(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="sk-test", max_retries=0, timeout=10)


def test_embeddings_are_forwarded_answered_and_logged(gateway, fake_upstream, log_dir):
    with client_for(gateway) as client:
        raw = client.embeddings.with_raw_response.create(
            model="emb-small", input=["a", "bbb"], encoding_format="float", extra_body={"x_dims_hint": 3}
        )
    result = raw.parse()
    assert [d.embedding for d in result.data] == [[1.0, 0.5, -0.5], [3.0, 0.5, -0.5]]
    sent = fake_upstream.requests[-1]
    assert sent["path"] == "/v1/embeddings"
    assert sent["body"] == {
        "model": "emb-small",
        "input": ["a", "bbb"],
        "encoding_format": "float",
        "x_dims_hint": 3,
    }
    r = row(gateway, log_dir, raw.headers["x-request-id"])
    assert r["endpoint"] == "embeddings"
    assert (r["status"], r["route"], r["stream"]) == (200, "emb-small", False)
    assert request(r)["input"] == ["a", "bbb"]
    assert len(response(r)["data"]) == 2
    assert r["input_tokens"] == 3


def test_embeddings_through_a_route_use_the_upstream_model_id(make_settings, start_gateway, fake_upstream):
    gw = start_gateway(
        make_settings(
            upstreams={"emb": {"model": "text-embedding-x"}}, routes={"embedder": {"baseline": "emb"}}
        )
    )
    with client_for(gw) as client:
        result = client.embeddings.create(model="embedder", input="hello")
    assert result.data[0].embedding[0] == 5.0
    assert fake_upstream.requests[-1]["body"]["model"] == "text-embedding-x"


def test_models_lists_the_configured_routes(make_settings, start_gateway):
    gw = start_gateway(
        make_settings(
            server={"passthrough_url": None},
            upstreams={"a": {"model": "m-a"}, "b": {"model": "m-b"}},
            routes={"support-bot": {"baseline": "a"}, "coder": {"baseline": "b"}},
        )
    )
    with client_for(gw) as client:
        ids = [m.id for m in client.models.list()]
        assert ids == ["coder", "support-bot"]
        assert client.models.retrieve("coder").id == "coder"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("nope")


def test_models_in_zero_config_mode_lists_the_upstreams_models(gateway):
    with client_for(gateway) as client:
        assert [m.id for m in client.models.list()] == ["echo"]


def test_a_model_listed_in_zero_config_mode_can_be_retrieved(gateway):
    with client_for(gateway) as client:
        for listed in client.models.list():
            assert client.models.retrieve(listed.id).id == listed.id
        with pytest.raises(openai.NotFoundError) as info:
            client.models.retrieve("not-upstream")
    assert info.value.code == "model_not_found"


def test_health_and_readiness(gateway):
    health = httpx.get(gateway.url + "/healthz", timeout=5).json()
    assert (health["status"], health["degraded"], health["state"]["healthy"]) == ("ok", [], True)
    assert health["store"]["quarantined"] == 0 and health["store"]["dropped"] == {}
    ready = httpx.get(gateway.url + "/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["status"] == "ok"
    assert ready.json()["store"]["healthy"] is True
