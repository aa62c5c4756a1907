"""Datasets from the call log: labels, relabels, exclusions, duplicates, redaction, golden set,
a stable split across rebuilds, versioning and the warning for filters that cut a region."""

from __future__ import annotations

import json
import os
import random

import pyarrow.parquet as pq
import pytest

from tests.support.tiny_model import (
    call_record,
    event_record,
    extraction_example,
    log_extraction_task,
    write_log,
)
from trainer.dataset import Filters, build_dataset, exclude, list_datasets, load_dataset, relabel
from trainer.errors import DatasetError

START = 1_700_000_000_000_000


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": text}]


class TestSource:
    def test_served_baseline_answers_become_labels(self, log_dir):
        records = log_extraction_task(log_dir, 60)
        write_log(
            log_dir,
            [
                call_record(user("shadow only"), "candidate answer", variant="candidate", served=False),
                call_record(user("other route"), "x", route="other"),
                call_record(user("upstream failed"), None, status=502),
            ],
        )
        dv = build_dataset(log_dir, "ex", route="extract")
        examples = dv.examples()
        by_call = {r["call_id"]: r for r in records}
        assert {e.call_id for e in examples} <= set(by_call)
        for e in examples:
            assert e.messages == json.loads(by_call[e.call_id]["request"])["messages"]
            assert e.completion == {
                "role": "assistant",
                "content": json.loads(by_call[e.call_id]["response"])["choices"][0]["message"]["content"],
            }
            assert e.label_source == "served"
        assert dv.manifest["counts"]["calls"] == 61  # the failed call is on the route too
        assert dv.manifest["removed"]["errors"] == 1
        everything = build_dataset(log_dir, "all")
        assert "other route" in json.dumps([e.messages for e in everything.examples()])
        assert "shadow only" not in json.dumps([e.messages for e in everything.examples()])

    def test_no_matching_calls_is_a_dataset_error(self, log_dir):
        log_extraction_task(log_dir, 5)
        with pytest.raises(DatasetError, match="no served baseline calls on route 'nope'"):
            build_dataset(log_dir, "ex", route="nope")
        with pytest.raises(DatasetError, match="invalid dataset name"):
            build_dataset(log_dir, "../escape")

    def test_time_window_selects_calls(self, log_dir):
        log_extraction_task(log_dir, 50, start_us=START)
        since = "2023-11-14T22:13:40+00:00"  # START + 20 s
        dv = build_dataset(log_dir, "ex", since=since, near_dup_threshold=None)
        assert dv.manifest["counts"]["calls"] == 30


class TestSplit:
    def test_split_is_disjoint_and_stable_when_rebuilt_with_more_data(self, log_dir):
        log_extraction_task(log_dir, 300, seed=1, start_us=START)
        v1 = build_dataset(log_dir, "ex")
        log_extraction_task(log_dir, 300, seed=2, start_us=START + 10**9)
        v2 = build_dataset(log_dir, "ex")
        assert (v1.version, v2.version) == (1, 2)

        def ids(dv, split):
            return {e.call_id for e in dv.examples(split)}

        for dv in (v1, v2):
            assert not ids(dv, "train") & ids(dv, "test")
            assert not {e.input_hash for e in dv.examples("train")} & {
                e.input_hash for e in dv.examples("test")
            }
        assert ids(v1, "test") <= ids(v2, "test")
        assert ids(v1, "train") <= ids(v2, "train")
        assert len(ids(v2, "test")) > len(ids(v1, "test"))
        share = len(ids(v2, "test")) / len(v2.examples())
        assert 0.05 < share < 0.16

    def test_same_data_gives_the_same_content_hash(self, log_dir):
        log_extraction_task(log_dir, 80)
        a, b = build_dataset(log_dir, "ex"), build_dataset(log_dir, "ex")
        assert a.manifest["content_hash"] == b.manifest["content_hash"]
        assert b.version == a.version + 1
        c = build_dataset(log_dir, "ex", test_fraction=0.3)
        assert c.manifest["content_hash"] != a.manifest["content_hash"]

    def test_golden_calls_are_never_in_train_or_test(self, log_dir):
        records = log_extraction_task(log_dir, 100)
        golden_ids = [r["call_id"] for r in records[:5]]
        tagged = call_record(user("a hard case"), "the hard answer", tags=["golden"])
        write_log(log_dir, [tagged])
        dv = build_dataset(log_dir, "ex", golden_call_ids=golden_ids, golden_tag="golden", route=None)
        golden = {e.call_id for e in dv.examples("golden")}
        assert golden == {*golden_ids, tagged["call_id"]}
        trainable = {e.call_id for e in dv.examples("train")} | {e.call_id for e in dv.examples("test")}
        assert not golden & trainable
        assert dv.splits["golden"] == 6


class TestLabels:
    def test_relabel_replaces_the_label_and_survives_quality_filters(self, log_dir):
        records = log_extraction_task(log_dir, 30)
        target = records[3]["call_id"]
        relabel(log_dir, target, '{"name": "fixed"}', user="ana")
        write_log(log_dir, [], [event_record(target, "thumbs", "down", value_num=0)])
        dv = build_dataset(log_dir, "ex", filters=Filters(thumbs_up_only=True), warn=False)
        (example,) = dv.examples()
        assert example.call_id == target
        assert example.completion == {"role": "assistant", "content": '{"name": "fixed"}'}
        assert example.label_source == "relabel"
        assert dv.manifest["removed"]["thumbs_up_only"] == 29
        pair = next(p for p in dv.preferences() if p.call_id == target)
        assert pair.source == "relabel"
        assert pair.chosen["content"] == '{"name": "fixed"}'
        assert (
            pair.rejected["content"] == json.loads(records[3]["response"])["choices"][0]["message"]["content"]
        )

    def test_the_latest_relabel_wins(self, log_dir):
        (rec,) = log_extraction_task(log_dir, 1)
        write_log(
            log_dir,
            [],
            [
                event_record(rec["call_id"], "relabel", "first", ts_us=START + 1),
                event_record(rec["call_id"], "relabel", "second", ts_us=START + 2),
            ],
        )
        assert build_dataset(log_dir, "ex").examples()[0].answer == "second"

    def test_excluded_calls_are_left_out(self, log_dir):
        records = log_extraction_task(log_dir, 20)
        exclude(log_dir, records[0]["call_id"], reason="contains a customer's secret")
        exclude(log_dir, records[1]["call_id"])
        dv = build_dataset(log_dir, "ex")
        assert {records[0]["call_id"], records[1]["call_id"]}.isdisjoint(e.call_id for e in dv.examples())
        assert dv.manifest["removed"]["excluded"] == 2

    def test_relabel_of_an_unknown_call_is_refused(self, log_dir):
        log_extraction_task(log_dir, 1)
        with pytest.raises(DatasetError, match="no call call_nope"):
            relabel(log_dir, "call_nope", "x")

    def test_regenerations_and_choices_give_preference_pairs(self, log_dir):
        q = user("What is the capital of France?")
        first = call_record(q, "Lyon", ts_us=START)
        retry = call_record(q, "Paris", ts_us=START + 5_000_000, regenerate_of=first["call_id"])
        two = call_record(user("Pick a colour"), None, choices=["red", "blue"], ts_us=START + 10_000_000)
        write_log(log_dir, [first, retry, two], [event_record(two["call_id"], "choice", "b")])
        dv = build_dataset(log_dir, "ex")
        pairs = {p.source: p for p in dv.preferences()}
        assert (pairs["regeneration"].chosen["content"], pairs["regeneration"].rejected["content"]) == (
            "Paris",
            "Lyon",
        )
        assert (pairs["choice"].chosen["content"], pairs["choice"].rejected["content"]) == ("blue", "red")
        assert dv.manifest["counts"]["preference_pairs"] == 2


class TestDuplicates:
    def test_exact_and_near_duplicates_are_reduced_to_the_earliest(self, log_dir):
        # the same answer (up to case and spaces) to near-identical inputs: one example is enough
        rows = [
            call_record(user("How do I reset my password on the mobile app?"), "Tap Reset.", ts_us=START),
            call_record(user("How do I reset my password on the mobile app?"), "tap reset.", ts_us=START + 1),
            call_record(
                user("How do I reset my  password on the mobile app??"), "Tap  Reset.", ts_us=START + 2
            ),
            call_record(user("how do i reset my password on the mobile app?"), "Tap Reset.", ts_us=START + 3),
            call_record(user("How do I delete my account forever and ever?"), "b1", ts_us=START + 4),
        ]
        write_log(log_dir, rows)
        dv = build_dataset(log_dir, "ex")
        assert sorted(e.call_id for e in dv.examples()) == sorted([rows[0]["call_id"], rows[4]["call_id"]])
        assert dv.manifest["removed"]["exact_duplicates"] == 1
        assert dv.manifest["removed"]["near_duplicates"] == 2
        assert "same label" in dv.manifest["removed_why"]["near_duplicates"]
        exact_only = build_dataset(log_dir, "ex", near_dup_threshold=None)
        assert sorted(e.call_id for e in exact_only.examples()) == sorted(
            r["call_id"] for r in (rows[0], rows[2], rows[3], rows[4])
        )

    def test_duplicates_whose_answers_differ_are_all_kept(self, log_dir):
        rows = [
            call_record(user("How do I reset my password on the mobile app?"), "a1", ts_us=START),
            call_record(user("How do I reset my password on the mobile app?"), "a2", ts_us=START + 1),
            call_record(user("How do I reset my  password on the mobile app??"), "a3", ts_us=START + 2),
        ]
        write_log(log_dir, rows)
        dv = build_dataset(log_dir, "ex")
        assert sorted(e.answer for e in dv.examples()) == ["a1", "a2", "a3"]
        assert dv.manifest["removed"]["exact_duplicates"] == dv.manifest["removed"]["near_duplicates"] == 0
        assert dv.manifest["dedup"]["kept_with_another_label"] == {"exact": 1, "near": 1}
        assert len({e.split for e in dv.examples()}) == 1  # one cluster, one side

    def test_a_shared_long_system_prompt_does_not_make_inputs_duplicates(self, log_dir):
        system = "You are a helpful assistant for ACME. " * 50
        rng = random.Random(0)
        rows = []
        for i in range(40):
            _, answer = extraction_example(rng)
            rows.append(
                call_record(
                    [
                        {"role": "system", "content": system},
                        {"role": "user", "content": f"order {i * 7919 % 1000} please"},
                    ],
                    answer,
                )
            )
        write_log(log_dir, rows)
        assert build_dataset(log_dir, "ex").manifest["removed"]["near_duplicates"] == 0

    def test_a_relabelled_duplicate_is_preferred(self, log_dir):
        rows = [call_record(user("same question"), "old", ts_us=START + i) for i in range(3)]
        write_log(log_dir, rows, [event_record(rows[2]["call_id"], "relabel", "corrected")])
        (example,) = build_dataset(log_dir, "ex").examples()
        assert (example.call_id, example.answer) == (rows[2]["call_id"], "corrected")


class TestRedaction:
    def test_secrets_are_redacted_by_default_and_pii_on_request(self, log_dir):
        write_log(
            log_dir,
            [
                call_record(
                    user("my key is sk-abcdefghijklmnopqrstuvwxyz123456, mail me at jo@example.com"),
                    "Bearer abcdefghijklmnopqrstuvwx is your token",
                )
            ],
        )
        (e,) = build_dataset(log_dir, "ex").examples()
        assert "sk-abc" not in e.messages[1]["content"] and "[API_KEY]" in e.messages[1]["content"]
        assert "jo@example.com" in e.messages[1]["content"]
        assert e.answer == "Bearer [TOKEN] is your token"
        (p,) = build_dataset(log_dir, "ex", redact="pii").examples()
        assert "[EMAIL]" in p.messages[1]["content"]
        (raw,) = build_dataset(log_dir, "ex", redact="none").examples()
        assert "sk-abcdefghijklmnopqrstuvwxyz123456" in raw.messages[1]["content"]

    def test_a_custom_redactor_is_a_hook(self, log_dir):
        write_log(log_dir, [call_record(user("Alice asked"), "Alice answered")])
        (e,) = build_dataset(log_dir, "ex", redact=lambda s: s.replace("Alice", "[NAME]")).examples()
        assert e.messages[1]["content"] == "[NAME] asked" and e.answer == "[NAME] answered"
        with pytest.raises(DatasetError, match="unknown redactor"):
            build_dataset(log_dir, "ex", redact="bogus")


class TestRegionWarning:
    def _log(self, log_dir, thumbs_down):
        rng = random.Random(3)
        rows, events = [], []
        for i in range(400):
            topic = rng.choice(["refund", "shipping", "invoice", "password"])
            text = f"question {i} about my {topic} for order {rng.randint(1000, 9999)}"
            rec = call_record(user(text), f"answer {i}", ts_us=START + i)
            rows.append(rec)
            down = thumbs_down(topic, rng)
            events.append(
                event_record(rec["call_id"], "thumbs", "down" if down else "up", value_num=0 if down else 1)
            )
        write_log(log_dir, rows, events)

    def test_a_filter_that_removes_a_topic_is_reported(self, log_dir, capsys):
        self._log(log_dir, lambda topic, rng: topic == "refund" or rng.random() < 0.1)
        dv = build_dataset(log_dir, "ex", filters=Filters(thumbs_up_only=True))
        (warning,) = [w for w in dv.manifest["warnings"] if "refund" in w]
        assert warning.startswith(
            "filter 'thumbs_up_only' removed 100% of the inputs with the word \"refund\""
        )
        assert "refund" in capsys.readouterr().err
        assert not any("shipping" in w for w in dv.manifest["warnings"])

    def test_a_filter_that_removes_random_noise_is_not_reported(self, log_dir):
        self._log(log_dir, lambda topic, rng: rng.random() < 0.3)
        dv = build_dataset(log_dir, "ex", filters=Filters(thumbs_up_only=True))
        assert 80 < dv.manifest["removed"]["thumbs_up_only"] < 160
        assert dv.manifest["warnings"] == []

    def test_an_sql_filter_is_checked_too(self, log_dir):
        self._log(log_dir, lambda topic, rng: False)
        dv = build_dataset(log_dir, "ex", filters=Filters(where="request NOT LIKE '%invoice%'"), warn=False)
        assert dv.manifest["removed"]["where"] > 60
        assert any('"invoice"' in w and w.startswith("filter 'where'") for w in dv.manifest["warnings"])
        with pytest.raises(DatasetError, match="invalid --where"):
            build_dataset(log_dir, "ex", filters=Filters(where="no_such_column = 1"))


class TestStorage:
    def test_versions_are_parquet_with_a_manifest(self, log_dir):
        log_extraction_task(log_dir, 40)
        dv = build_dataset(log_dir, "ex", route="extract")
        assert dv.path == os.path.join(log_dir, "datasets", "ex", "v1")
        table = pq.read_table(os.path.join(dv.path, "examples.parquet"))
        assert table.num_rows == dv.manifest["counts"]["examples"] == sum(dv.splits.values())
        assert set(table.column("split").to_pylist()) <= {"train", "test"}
        with open(os.path.join(dv.path, "manifest.json")) as f:
            manifest = json.load(f)
        assert manifest["source"]["params"] == ["extract"]
        assert "FROM calls_with_outcomes" in manifest["source"]["query"]
        assert manifest["content_hash"].startswith("sha256:")
        split = manifest["split"]
        assert split["method"] == "sha256(salt, user-visible input of its near-duplicate cluster's centre)"
        assert (split["salt"], split["test_fraction"], split["group_threshold"]) == (
            "shadowtune-split-v1",
            0.1,
            0.7,
        )
        assert split["groups"] >= 1 and split["moved_to_test"] == 0

    def test_load_and_list(self, log_dir):
        log_extraction_task(log_dir, 10)
        build_dataset(log_dir, "ex")
        build_dataset(log_dir, "ex")
        assert load_dataset(log_dir, "ex").version == 2
        assert load_dataset(log_dir, "ex@v1").version == 1
        assert [d.ref for d in list_datasets(log_dir)] == ["ex@v1", "ex@v2"]
        with pytest.raises(DatasetError, match="has no version v9"):
            load_dataset(log_dir, "ex", 9)
        with pytest.raises(DatasetError, match="no dataset named 'nope'"):
            load_dataset(log_dir, "nope")


def test_a_relabelled_call_whose_logged_answer_is_not_json_is_kept(log_dir):
    # An upstream's 2xx HTML (or truncated JSON) is logged raw with status 502: a reviewer's
    # relabel of it is a hard case, not a call without a body.
    ok = call_record(user("an easy question"), "easy answer", ts_us=START)
    bad = call_record(user("a hard question"), None, status=502, ts_us=START + 1)
    bad["response"] = "<html><body>502 Bad Gateway</body></html>"
    write_log(log_dir, [ok, bad], [event_record(bad["call_id"], "relabel", "the right answer")])
    dv = build_dataset(log_dir, "ex", warn=False)
    by_call = {e.call_id: e for e in dv.examples()}
    assert by_call[bad["call_id"]].answer == "the right answer"
    assert by_call[bad["call_id"]].label_source == "relabel"
    assert dv.manifest["removed"]["no_body"] == 0


def test_answers_whose_choices_are_not_objects_are_skipped_not_a_crash(log_dir):
    good = call_record(user("a normal question"), "a normal answer", ts_us=START)
    odd = []
    for n, choices in enumerate((["just text"], {"0": {"message": {}}}, "abc", [None, "x"], ["a", "b"])):
        rec = call_record(user(f"odd answer {n}"), "x", ts_us=START + 1 + n)
        rec["response"] = json.dumps({"object": "chat.completion", "choices": choices})
        odd.append(rec)
    events = [event_record(r["call_id"], "choice", "a") for r in odd]
    write_log(log_dir, [good, *odd], events)
    dv = build_dataset(log_dir, "ex", warn=False)
    assert [e.call_id for e in dv.examples()] == [good["call_id"]]
    assert dv.manifest["removed"]["errors"] == len(odd)  # no usable answer, reported as such


def test_tool_call_arguments_are_redacted_like_the_text(log_dir):
    args = json.dumps({"to": "jo@example.com", "api": "sk-abcdefghijklmnopqrstuvwxyz123456"})
    tool_call = {"id": "c1", "type": "function", "function": {"name": "send_mail", "arguments": args}}
    history = [
        *user("mail jo please"),
        {"role": "assistant", "content": None, "tool_calls": [tool_call]},
        {"role": "tool", "tool_call_id": "c1", "content": "sent"},
        {"role": "user", "content": "and again"},
    ]
    rec = call_record(history, None, ts_us=START)
    answer = {"role": "assistant", "content": None, "tool_calls": [tool_call]}
    rec["response"] = json.dumps(
        {"choices": [{"index": 0, "message": answer, "finish_reason": "tool_calls"}]}
    )
    write_log(log_dir, [rec])
    (e,) = build_dataset(log_dir, "ex", redact="pii", warn=False).examples()
    written = json.dumps([e.messages, e.completion])
    assert "jo@example.com" not in written and "sk-abcdefghijklmnopqrstuvwxyz123456" not in written
    label_args = json.loads(e.completion["tool_calls"][0]["function"]["arguments"])
    assert label_args == {"to": "[EMAIL]", "api": "[API_KEY]"}  # still JSON
    assert json.loads(e.messages[2]["tool_calls"][0]["function"]["arguments"]) == label_args
