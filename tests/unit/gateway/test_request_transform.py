"""The candidate's request transform: its rules, its validation and its fingerprint."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import RouteConfig
from gateway.protocol.transform import RequestTransform, TransformError, compiled, fingerprint, parse

SYSTEM = {"role": "system", "content": "You extract dates. Answer as JSON. Examples follow."}
SHOTS = [
    {"role": "user", "content": "Meeting on 3 May"},
    {"role": "assistant", "content": '{"date": "2023-05-03"}'},
    {"role": "user", "content": "Due 1 June"},
    {"role": "assistant", "content": '{"date": "2023-06-01"}'},
]
ASK = {"role": "user", "content": "Invoice of 9 Feb"}
REQ = {"model": "bot", "messages": [SYSTEM, *SHOTS, ASK], "temperature": 0.7, "logit_bias": {"1": 2}}


def test_drop_system_and_few_shot_turns_keeps_the_conversation():
    t = parse({"system": "drop", "few_shot_turns": 2})
    assert t is not None
    before = copy.deepcopy(REQ)
    out = t.apply(REQ)
    assert out["messages"] == [ASK]
    assert before == REQ  # the caller's request is never changed
    assert out["model"] == "bot" and out["temperature"] == 0.7


def test_replace_system_and_set_and_drop_params():
    t = parse({"system": "replace", "system_prompt": "Dates as JSON.", "params": {"temperature": 0, "max_tokens": 64},
               "drop_params": ["logit_bias"]})  # fmt: skip
    assert t is not None
    out = t.apply(REQ)
    assert out["messages"][0] == {"role": "system", "content": "Dates as JSON."}
    assert out["messages"][1:] == [*SHOTS, ASK]
    assert (out["temperature"], out["max_tokens"]) == (0, 64)
    assert "logit_bias" not in out


def test_few_shot_never_eats_the_last_user_turn():
    t = parse({"few_shot_turns": 5})
    assert t is not None
    short = [SYSTEM, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, ASK]
    assert t.apply_messages(short) == [SYSTEM, ASK]
    assert t.apply_messages([SYSTEM, ASK]) == [SYSTEM, ASK]
    # a pair that is not user/assistant stops the dropping
    odd = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, ASK]
    assert t.apply_messages(odd) == odd


def test_responses_api_instructions_and_input_list():
    t = parse({"system": "replace", "system_prompt": "short", "few_shot_turns": 1})
    assert t is not None
    req = {"model": "bot", "instructions": "long prompt", "input": [*SHOTS[:2], ASK]}
    out = t.apply(req)
    assert out["instructions"] == "short"
    assert out["input"] == [{"role": "system", "content": "short"}, ASK]
    dropped = parse({"system": "drop"})
    assert dropped is not None and "instructions" not in dropped.apply(req)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"sytem": "drop"}, "unknown field(s) sytem"),
        ({"system": "remove"}, "system must be one of"),
        ({"system": "replace"}, "system_prompt goes with system: replace"),
        ({"system_prompt": "x"}, "system_prompt goes with system: replace"),
        ({"few_shot_turns": -1}, "whole number"),
        ({"few_shot_turns": True}, "whole number"),
        ({"params": {"model": "other"}}, "cannot set or remove model"),
        ({"drop_params": ["messages"]}, "cannot set or remove messages"),
        ({"params": {"top_p": 1}, "drop_params": ["top_p"]}, "both sets and removes top_p"),
        ({"drop_params": "temperature"}, "list of parameter names"),
        ([1, 2], "must be an object"),
    ],
)
def test_invalid_specs_name_the_field(spec, needle):
    with pytest.raises(TransformError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        parse(spec)


def test_fingerprint_is_canonical_and_tells_transforms_apart():
    a = parse({"few_shot_turns": 2, "system": "drop", "params": {"b": 1, "a": 2}})
    b = parse({"params": {"a": 2, "b": 1}, "system": "drop", "few_shot_turns": 2, "drop_params": []})
    assert a is not None and b is not None
    assert a.fingerprint == b.fingerprint and a.fingerprint.startswith("tf_") and len(a.fingerprint) == 15
    c = parse({"few_shot_turns": 1, "system": "drop", "params": {"b": 1, "a": 2}})
    assert c is not None and c.fingerprint != a.fingerprint
    assert parse({}) is None and parse({"system": "keep"}) is None and fingerprint(None) is None
    assert compiled(a.spec) == a
    assert "drop the system prompt; drop 2 few-shot turn(s)" in a.describe()


def test_settings_validate_the_transform():
    rc = RouteConfig(baseline="b", candidate_transform={"system": "drop", "few_shot_turns": 1})
    assert rc.candidate_transform is not None
    assert rc.candidate_transform.spec() == {"system": "drop", "few_shot_turns": 1}
    with pytest.raises(ValueError, match="system_prompt goes with system: replace"):
        RouteConfig(baseline="b", candidate_transform={"system": "replace"})


_message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "developer", "user", "assistant", "tool", 7]),
        "content": st.text(max_size=5),
    }
)


@given(
    messages=st.lists(st.one_of(_message, st.integers(), st.none()), max_size=12),
    turns=st.integers(0, 4),
    system=st.sampled_from(["keep", "drop", "replace"]),
)
def test_any_message_list_keeps_its_last_message_and_never_raises(messages, turns, system):
    spec = {"system": system, "few_shot_turns": turns}
    if system == "replace":
        spec["system_prompt"] = "p"
    t = parse(spec) or RequestTransform()
    out = t.apply_messages(messages)
    non_system = [
        m for m in messages if not (isinstance(m, dict) and m.get("role") in ("system", "developer"))
    ]
    if messages and non_system and messages[-1] is non_system[-1]:
        assert out[-1] is messages[-1]  # the turn being answered is always sent
    assert len(out) <= len(messages) + 1
