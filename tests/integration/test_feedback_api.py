"""POST /v1/feedback and `shadowtune feedback add` against a running gateway and a real log."""

import httpx
from click.testing import CliRunner
from openai import OpenAI

from gateway.cli import main
from gateway.store import LogStore


def _call(gw):
    client = OpenAI(base_url=gw.base_url, api_key="sk-test")
    raw = client.chat.completions.with_raw_response.create(
        model="echo-1", messages=[{"role": "user", "content": "hi"}], user="u1"
    )
    return raw.headers["x-request-id"], raw.parse().id


def test_feedback_by_call_id_and_by_response_id_is_joined_to_the_call(gateway, log_dir):
    call_id, response_id = _call(gateway)
    r1 = httpx.post(
        gateway.url + "/v1/feedback", json={"call_id": call_id, "kind": "thumbs", "value": "down"}
    )
    r2 = httpx.post(gateway.url + "/v1/feedback", json={"call_id": response_id, "kind": "rating", "value": 4})
    assert r1.status_code == 200 and r1.json()["id"].startswith("evt_")
    assert r2.status_code == 200
    gateway.flush()
    row = LogStore.open(log_dir).sql(
        "SELECT thumbs_down, rating FROM calls_with_outcomes WHERE call_id = ?", [call_id]
    )
    assert row == [{"thumbs_down": 1, "rating": 4.0}]


def test_bad_feedback_is_a_400_and_nothing_is_stored(gateway, log_dir):
    call_id, _ = _call(gateway)
    bad = [
        ({"call_id": call_id, "kind": "stars", "value": 1}, "kind"),
        ({"call_id": call_id, "kind": "rating", "value": 11}, "value"),
        ({"call_id": call_id, "kind": "thumbs", "value": "sideways"}, "value"),
        ({"kind": "thumbs", "value": "up"}, "call_id"),
    ]
    for body, param in bad:
        r = httpx.post(gateway.url + "/v1/feedback", json=body)
        assert r.status_code == 400, body
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert r.json()["error"]["param"] == param
    r = httpx.post(gateway.url + "/v1/feedback", content=b"{not json")
    assert r.status_code == 400
    gateway.flush()
    assert LogStore.open(log_dir).count("events") == 0


def test_cli_feedback_add_posts_to_the_gateway(gateway, log_dir):
    call_id, _ = _call(gateway)
    result = CliRunner().invoke(main, ["feedback", "add", call_id, "thumbs", "up", "--url", gateway.url])
    assert result.exit_code == 0, result.output
    assert result.output.strip().startswith("evt_")
    bad = CliRunner().invoke(main, ["feedback", "add", call_id, "rating", "99", "--url", gateway.url])
    assert bad.exit_code != 0 and "value" in bad.output
    gateway.flush()
    assert LogStore.open(log_dir).sql("SELECT thumbs_up FROM outcomes WHERE call_id = ?", [call_id]) == [
        {"thumbs_up": 1}
    ]
