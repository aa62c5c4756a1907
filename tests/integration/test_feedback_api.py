"""POST /v1/feedback and `shadowtune feedback add` against a running gateway and a real log."""

import re

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


# -- who may post, repeats, rate limit ---------------------------------------------------
import pytest  # noqa: E402

from gateway.auth import KeyFile  # noqa: E402
from gateway.signals.feedback import key_id  # noqa: E402

ADMIN = "admin-secret-token"


@pytest.fixture
def keyed(make_settings, start_gateway, log_dir):
    files = KeyFile(log_dir)
    keys = {"alice": files.create("alice"), "bob": files.create("bob")}
    settings = make_settings(
        server={"auth": "keys", "admin_token": ADMIN},
        signals={"feedback_rate_per_min": 600, "feedback_burst": 50},
    )
    return start_gateway(settings), keys


def _keyed_call(gw, key):
    client = OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="echo-1", messages=[{"role": "user", "content": "hi"}], user="u1"
    )
    return raw.headers["x-request-id"], raw.parse().id


def _post(gw, token, body):
    return httpx.post(gw.url + "/v1/feedback", json=body, headers={"Authorization": f"Bearer {token}"})


def test_another_keys_feedback_is_a_404_and_nothing_is_stored(keyed, log_dir):
    gw, keys = keyed
    call_id, response_id = _keyed_call(gw, keys["alice"])
    for i in range(21):
        target = call_id if i % 2 else response_id
        r = _post(gw, keys["bob"], {"call_id": target, "kind": "thumbs", "value": "down"})
        assert r.status_code == 404, r.text
        err = r.json()["error"]
        assert (err["type"], err["code"]) == ("invalid_request_error", "call_not_found")
    # a call that does not exist answers the same (no probing for other keys' calls)
    r = _post(gw, keys["bob"], {"call_id": "req_does_not_exist", "kind": "thumbs", "value": "down"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "call_not_found"
    gw.flush()
    assert LogStore.open(log_dir).count("events") == 0

    ok = _post(gw, keys["alice"], {"call_id": response_id, "kind": "thumbs", "value": "down"})
    assert ok.status_code == 200, ok.text
    admin = _post(gw, ADMIN, {"call_id": call_id, "kind": "flag", "value": "checked by ops"})
    assert admin.status_code == 200, admin.text
    gw.flush()
    store = LogStore.open(log_dir)
    events = store.sql("SELECT kind, source, client_key, key_id FROM events ORDER BY ts")
    assert events == [
        {"kind": "thumbs", "source": "api", "client_key": "alice", "key_id": key_id(keys["alice"])},
        {"kind": "flag", "source": "admin", "client_key": None, "key_id": None},
    ]
    assert keys["alice"] not in str(store.sql("SELECT * FROM events"))  # the key itself is never stored
    assert store.sql("SELECT thumbs_down FROM outcomes WHERE call_id = ?", [call_id]) == [{"thumbs_down": 1}]


def test_repeated_feedback_is_idempotent_per_call_kind_and_key(keyed, log_dir):
    gw, keys = keyed
    call_id, response_id = _keyed_call(gw, keys["alice"])
    first = _post(gw, keys["alice"], {"call_id": call_id, "kind": "thumbs", "value": "down"})
    assert first.status_code == 200 and first.json()["duplicate"] is False
    gw.flush()
    for target in (call_id, response_id, call_id):
        again = _post(gw, keys["alice"], {"call_id": target, "kind": "thumbs", "value": "down"})
        assert again.status_code == 200
        assert again.json()["duplicate"] is True and again.json()["id"] == first.json()["id"]
    gw.flush()
    store = LogStore.open(log_dir)
    assert store.count("events") == 1
    assert store.sql("SELECT thumbs_up, thumbs_down FROM outcomes WHERE call_id = ?", [call_id]) == [
        {"thumbs_up": 0, "thumbs_down": 1}
    ]
    # changing one's mind is a new event that replaces the old one in the outcomes
    changed = _post(gw, keys["alice"], {"call_id": call_id, "kind": "thumbs", "value": "up"})
    assert changed.json()["duplicate"] is False
    gw.flush()
    store = LogStore.open(log_dir)
    assert store.sql("SELECT thumbs_up, thumbs_down FROM outcomes WHERE call_id = ?", [call_id]) == [
        {"thumbs_up": 1, "thumbs_down": 0}
    ]


def test_repeats_racing_past_the_check_still_count_once(keyed, log_dir):
    gw, keys = keyed
    call_id, _ = _keyed_call(gw, keys["alice"])
    body = {"call_id": call_id, "kind": "thumbs", "value": "down"}
    with httpx.Client(headers={"Authorization": f"Bearer {keys['alice']}"}) as http:
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(
                pool.map(lambda _: http.post(gw.url + "/v1/feedback", json=body).status_code, range(16))
            )
    assert codes == [200] * 16
    gw.flush()
    store = LogStore.open(log_dir)
    assert store.count("events") >= 1
    assert store.sql("SELECT thumbs_down FROM outcomes WHERE call_id = ?", [call_id]) == [{"thumbs_down": 1}]
    assert store.sql("SELECT count(*) AS n FROM user_events WHERE call_id = ?", [call_id]) == [{"n": 1}]


def test_feedback_is_rate_limited_per_key(make_settings, start_gateway, log_dir):
    files = KeyFile(log_dir)
    alice, bob = files.create("alice"), files.create("bob")
    gw = start_gateway(
        make_settings(server={"auth": "keys"}, signals={"feedback_rate_per_min": 6, "feedback_burst": 3})
    )
    call_id, _ = _keyed_call(gw, alice)
    bob_call, _ = _keyed_call(gw, bob)
    kinds = [("thumbs", "up"), ("rating", 4), ("flag", True), ("thumbs", "down")]
    codes = [_post(gw, alice, {"call_id": call_id, "kind": k, "value": v}) for k, v in kinds]
    assert [r.status_code for r in codes] == [200, 200, 200, 429]
    err = codes[-1].json()["error"]
    assert (err["type"], err["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert int(codes[-1].headers["retry-after"]) >= 1
    # another key has its own budget
    assert _post(gw, bob, {"call_id": bob_call, "kind": "thumbs", "value": "up"}).status_code == 200


def test_reviewer_thumbs_are_recorded_apart_and_kept_out_of_the_controllers_inputs(gateway, log_dir):
    from evals.online.outcomes_query import query_cells

    call_id, _ = _call(gateway)
    other_id, _ = _call(gateway)
    gateway.flush()
    assert (
        httpx.post(
            gateway.url + "/v1/feedback", json={"call_id": call_id, "kind": "thumbs", "value": "up"}
        ).status_code
        == 200
    )
    with httpx.Client(base_url=gateway.url) as review:  # loopback reviewer, no admin token configured
        for target in (call_id, call_id, other_id):
            page = review.get(f"/review/calls/{target}").text  # sets the CSRF cookie the forms carry
            csrf = re.findall(r'<input type="hidden" name="csrf" value="([^"]+)">', page)[0]
            r = review.post(f"/review/calls/{target}/thumbs", data={"value": "down", "csrf": csrf})
            assert r.status_code == 303, r.text
    gateway.flush()
    store = LogStore.open(log_dir)
    events = store.sql("SELECT call_id, source, reviewer FROM events WHERE source = 'reviewer' ORDER BY ts")
    assert [(e["call_id"], e["reviewer"]) for e in events] == [
        (call_id, "local"),
        (call_id, "local"),
        (other_id, "local"),
    ]
    got = store.sql(
        "SELECT call_id, thumbs_up, thumbs_down, reviewer_thumbs_up, reviewer_thumbs_down FROM outcomes ORDER BY call_id"
    )
    by_id = {r.pop("call_id"): r for r in got}
    assert by_id[call_id] == {
        "thumbs_up": 1,
        "thumbs_down": 0,
        "reviewer_thumbs_up": 0,
        "reviewer_thumbs_down": 1,
    }
    assert by_id[other_id] == {
        "thumbs_up": 0,
        "thumbs_down": 0,
        "reviewer_thumbs_up": 0,
        "reviewer_thumbs_down": 1,
    }
    route = store.sql("SELECT route FROM calls WHERE call_id = ?", [call_id])[0]["route"]
    groups, _ = query_cells(store, route, 0)  # what the controller and `eval outcomes` read

    def baseline_rate(metric: str) -> float:
        cells = [c for c in groups[None].cells[metric] if c.arm == "baseline"]
        return sum(c.y for c in cells) / sum(c.n for c in cells)

    assert groups[None].calls == 2
    assert baseline_rate("thumbs_up_rate") == 0.5
    assert baseline_rate("thumbs_down_rate") == 0.0  # three reviewer thumbs-down, none counted
