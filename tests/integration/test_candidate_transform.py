"""The candidate's own prompt, end to end on a real gateway: what the candidate is sent and what
the log keeps (shadow and canary), the route state's versions and audit, the dataset built with
the same transform, and a deploy refused when the model was trained with another one."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from openai import OpenAI

from gateway.protocol.transform import parse
from gateway.store import LogStore
from trainer.dataset import build_dataset
from trainer.deploy import deploy_version
from trainer.errors import ServeError
from trainer.registry import Registry
from trainer.transform_source import route_transform

TOKEN = "admin-t0ken"
SYSTEM = {"role": "system", "content": "You extract dates. Long prompt with rules and examples."}
SHOTS = [
    {"role": "user", "content": "Meeting on 3 May"},
    {"role": "assistant", "content": '{"date": "2023-05-03"}'},
]
TRANSFORM = {"system": "drop", "few_shot_turns": 1, "params": {"temperature": 0}}


def wait_rows(log_dir, sql, params=(), n=1, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        rows = LogStore.open(log_dir).sql(sql, list(params))
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def shadow_rows(log_dir, parent):
    return wait_rows(log_dir, "SELECT * FROM calls WHERE parent_call_id = ?", [parent])


def _settings(make_settings, mode="shadow", **route):
    return make_settings(
        server={"admin_token": TOKEN},
        upstreams={"base": {"model": "echo-base"}, "cand": {"model": "echo-cand"}},
        routes={"bot": {"baseline": "base", "candidate": "cand", "mode": mode, "candidate_transform": TRANSFORM,
                        **route}},
    )  # fmt: skip


def _ask(gw, text, user="u1"):
    client = OpenAI(base_url=gw.base_url, api_key="sk-test")
    raw = client.chat.completions.with_raw_response.create(
        model="bot", messages=[SYSTEM, *SHOTS, {"role": "user", "content": text}], user=user, temperature=0.9
    )
    return raw.headers["x-request-id"]


def test_shadow_candidate_is_sent_the_transform_and_the_row_keeps_it(
    make_settings, start_gateway, log_dir, fake_upstream
):
    gw = start_gateway(_settings(make_settings))
    call_id = _ask(gw, "Invoice of 9 Feb 2024")
    [shadow] = shadow_rows(log_dir, call_id)
    gw.flush()
    served = LogStore.open(log_dir).sql("SELECT * FROM calls WHERE call_id = ?", [call_id])[0]
    base_body, cand_body = (r["body"] for r in fake_upstream.requests)
    # the baseline gets the application's request byte for byte; the candidate its own
    assert [m["role"] for m in base_body["messages"]] == ["system", "user", "assistant", "user"]
    assert base_body["temperature"] == 0.9
    assert cand_body["messages"] == [{"role": "user", "content": "Invoice of 9 Feb 2024"}]
    assert cand_body["temperature"] == 0
    # the log keeps what each was sent; the candidate's row names the transform
    fp = parse(TRANSFORM).fingerprint
    assert json.loads(served["request"])["messages"] == base_body["messages"]
    assert json.loads(shadow["request"])["messages"] == cand_body["messages"]
    assert f"transform:{fp}" in shadow["tags"]
    assert not any(t.startswith("transform:") for t in served["tags"] or [])


def test_canary_served_candidate_row_keeps_the_sent_request(
    make_settings, start_gateway, log_dir, fake_upstream
):
    gw = start_gateway(_settings(make_settings, mode="canary", share=100.0))
    call_id = _ask(gw, "Paid on 2 March")
    gw.flush()
    [row] = wait_rows(log_dir, "SELECT * FROM calls WHERE call_id = ?", [call_id])
    assert (row["variant"], row["served"]) == ("candidate", True)
    assert json.loads(row["request"])["messages"] == [{"role": "user", "content": "Paid on 2 March"}]
    assert fake_upstream.requests[-1]["body"]["messages"] == [{"role": "user", "content": "Paid on 2 March"}]


def test_transform_changes_are_versioned_audited_and_validated(make_settings, start_gateway, fake_upstream):
    gw = start_gateway(_settings(make_settings))
    h = {"Authorization": f"Bearer {TOKEN}"}
    before = httpx.get(f"{gw.url}/admin/routes/bot", headers=h).json()
    new = {"system": "replace", "system_prompt": "Dates as JSON.", "few_shot_turns": 0, "drop_params": []}
    r = httpx.patch(
        f"{gw.url}/admin/routes/bot", headers=h, json={"candidate_transform": new, "reason": "shorter"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["candidate_transform"] == {
        "system": "replace",
        "system_prompt": "Dates as JSON.",
    }  # canonical
    assert r.json()["version"] > before["version"]
    history = httpx.get(f"{gw.url}/admin/routes/bot/history", headers=h).json()["data"]
    assert history[-1]["reason"] == "shorter"
    assert history[-1]["after"]["candidate_transform"]["system_prompt"] == "Dates as JSON."
    bad = httpx.patch(f"{gw.url}/admin/routes/bot", headers=h, json={"candidate_transform": {"system": "x"}})
    assert bad.status_code == 400
    err = bad.json()["error"]
    assert err["param"] == "candidate_transform" and "system must be one of" in err["message"]
    seen = len(fake_upstream.requests)
    _ask(gw, "On 4 July")
    deadline = time.monotonic() + 15
    cand: list[dict] = []
    while not cand and time.monotonic() < deadline:  # the shadow call goes out after the answer
        cand = [r["body"] for r in fake_upstream.requests[seen:] if r["body"]["model"] == "echo-cand"]
        time.sleep(0.05)
    assert cand and cand[0]["messages"][0] == {"role": "system", "content": "Dates as JSON."}


def test_dataset_input_equals_what_the_candidate_was_sent_and_deploy_checks_it(
    make_settings, start_gateway, log_dir, fake_upstream
):
    gw = start_gateway(_settings(make_settings))
    h = {"Authorization": f"Bearer {TOKEN}"}  # an operator sets the transform at run time: stored state
    httpx.patch(
        f"{gw.url}/admin/routes/bot", headers=h, json={"candidate_transform": TRANSFORM}
    ).raise_for_status()
    ids = [_ask(gw, f"Invoice {i} of 9 Feb 2024", user=f"u{i}") for i in range(12)]
    for cid in ids:
        shadow_rows(log_dir, cid)
    gw.flush()
    spec, source = route_transform("auto", "bot", log_dir=log_dir)
    assert spec == parse(TRANSFORM).spec
    assert source.startswith("route state v")
    dv = build_dataset(log_dir, "dates", route="bot", transform=spec, test_fraction=0.0, near_dup_threshold=None,
                       group_threshold=None, warn=False)  # fmt: skip
    assert dv.manifest["candidate_transform"]["fingerprint"] == parse(TRANSFORM).fingerprint
    sent = {
        r["parent_call_id"]: json.loads(r["request"])["messages"]
        for r in LogStore.open(log_dir).sql("SELECT parent_call_id, request FROM calls WHERE NOT served")
    }
    examples = dv.examples()
    assert len(examples) == 12
    for ex in examples:  # the training input is exactly what the candidate was sent for that call
        assert ex.messages == sent[ex.call_id]
        assert ex.completion["content"].startswith("echo-base: ")  # labelled by the baseline

    # a model trained on that dataset; the route now sends another transform
    mv = Registry(log_dir).register(
        "dates-ft",
        base_model="tiny",
        kind="hosted",
        hosted_model="ft:dates",
        dataset={"name": "dates", "version": 1},
    )
    httpx.patch(
        f"{gw.url}/admin/routes/bot", headers=h, json={"candidate_transform": None}
    ).raise_for_status()
    with pytest.raises(ServeError, match="was trained on requests sent with tf_") as refused:
        deploy_version(
            log_dir, mv.version, "bot", url=gw.url, admin_token=TOKEN, serve_url=fake_upstream.base_url
        )
    assert "--set-transform" in str(refused.value)
    assert httpx.get(f"{gw.url}/admin/routes/bot", headers=h).json()["candidate"] == "cand"  # nothing changed
    dep = deploy_version(log_dir, mv.version, "bot", url=gw.url, admin_token=TOKEN,
                         serve_url=fake_upstream.base_url, set_transform=True)  # fmt: skip
    assert dep["route_state"]["candidate_transform"] == parse(TRANSFORM).spec
    assert dep["route_state"]["candidate"] == mv.version
    # the route now matches: a second deploy goes through without the flag
    deploy_version(
        log_dir, mv.version, "bot", url=gw.url, admin_token=TOKEN, serve_url=fake_upstream.base_url
    )


def test_transform_source_falls_back_to_the_settings_file_and_reads_spec_files(tmp_path):
    cfg = tmp_path / "shadowtune.yaml"
    cfg.write_text(
        "upstreams:\n  base: {base_url: 'http://127.0.0.1:9/v1'}\n"
        "routes:\n  bot: {baseline: base, candidate_transform: {system: drop}}\n"
    )
    log = str(tmp_path / "log")
    assert route_transform("auto", "bot", log_dir=log, config=str(cfg)) == ({"system": "drop"}, "settings")
    assert route_transform("auto", "other", log_dir=log, config=str(cfg))[0] is None
    assert route_transform("none", "bot", log_dir=log, config=str(cfg)) == (None, "none")
    spec = tmp_path / "t.json"
    spec.write_text(json.dumps({"few_shot_turns": 2}))
    assert route_transform(str(spec), "bot", log_dir=log)[0] == {"few_shot_turns": 2}
    spec.write_text(json.dumps({"few_shot_turns": "two"}))
    from trainer.errors import DatasetError

    with pytest.raises(DatasetError, match="whole number"):
        route_transform(str(spec), "bot", log_dir=log)
