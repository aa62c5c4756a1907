"""Bulk relabel from a JSONL or CSV file (`trainer.relabel_bulk`, ``dataset relabel --file``), on a real log."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from gateway.store import LogStore, LogWriter
from gateway.store.ids import new_id
from trainer.cli import dataset


@pytest.fixture
def log(tmp_path):
    path = str(tmp_path / "log")
    ids = [new_id("call") for _ in range(4)]
    now = time.time_ns() // 1000
    with LogWriter(path) as w:
        for i, cid in enumerate(ids):
            w.append(
                "calls", {"call_id": cid, "ts": now - i, "route": "r", "variant": "baseline", "served": True}
            )
    return path, ids


def relabels(path):
    with LogStore.open(path) as s:
        return s.sql("SELECT call_id, value, comment, source FROM events WHERE kind = 'relabel' ORDER BY ts")


def run(path, *args):
    return CliRunner().invoke(dataset, ["relabel", "--log-dir", path, *args], catch_exceptions=False)


def test_a_jsonl_file_relabels_every_call_in_one_process(log, tmp_path):
    path, ids = log
    f = tmp_path / "fix.jsonl"
    lines = [
        {"call_id": ids[0], "answer": "A\r\nB", "comment": "typo"},
        {"call_id": ids[1], "answer": "<b>x</b>"},
    ]
    lines.append({"call_id": ids[0], "answer": "A, again"})  # a call named twice keeps its last line
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    r = run(path, "--file", str(f))
    assert r.exit_code == 0, r.output
    assert "relabelled 3 call(s)" in r.output
    got = relabels(path)
    assert [(g["call_id"], g["value"], g["comment"], g["source"]) for g in got] == [
        (ids[0], "A\nB", "typo", "cli"),
        (ids[1], "<b>x</b>", None, "cli"),
        (ids[0], "A, again", None, "cli"),
    ]
    with LogStore.open(path) as s:
        latest = s.sql("SELECT relabel FROM outcomes WHERE call_id = ?", [ids[0]])
    assert latest == [{"relabel": "A, again"}]


def test_a_csv_file_with_quoted_newlines_and_any_column_order(log, tmp_path):
    path, ids = log
    f = tmp_path / "fix.csv"
    f.write_text(
        f'comment,answer,call_id\nwhy,"line 1\nline 2",{ids[2]}\n,"x, y",{ids[3]}\n', encoding="utf-8"
    )
    r = run(path, "--file", str(f), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == {"written": 2, "lines": 2, "errors": []}
    assert {(g["call_id"], g["value"], g["comment"]) for g in relabels(path)} == {
        (ids[2], "line 1\nline 2", "why"),
        (ids[3], "x, y", None),
    }


def test_bad_lines_are_reported_by_number_and_nothing_is_written(log, tmp_path):
    path, ids = log
    f = tmp_path / "fix.jsonl"
    f.write_text(
        "\n".join(
            [
                json.dumps({"call_id": ids[0], "answer": "good"}),
                "{not json",
                json.dumps({"call_id": ids[1], "answer": "   "}),
                json.dumps({"call_id": "call_NOPE", "answer": "who?"}),
                json.dumps(["call_id", "answer"]),
            ]
        ),
        encoding="utf-8",
    )
    r = CliRunner().invoke(dataset, ["relabel", "--log-dir", path, "--file", str(f)])
    assert r.exit_code == 1
    for n, why in (
        (2, "not valid JSON"),
        (3, "answer is missing or empty"),
        (4, "no call call_NOPE"),
        (5, "an object"),
    ):
        assert f"fix.jsonl:{n}: " in r.output and why in r.output, (n, r.output)
    assert "nothing written" in r.output
    assert relabels(path) == []
    # --skip-invalid writes the good line and still exits 1, naming the bad ones
    r = CliRunner().invoke(dataset, ["relabel", "--log-dir", path, "--file", str(f), "--skip-invalid"])
    assert r.exit_code == 1 and "relabelled 1 call(s)" in r.output and "4 bad line(s) skipped" in r.output
    assert [g["value"] for g in relabels(path)] == ["good"]


def test_a_csv_without_the_columns_and_both_forms_at_once_are_refused(log, tmp_path):
    path, ids = log
    f = tmp_path / "fix.csv"
    f.write_text("id,text\nx,y\n", encoding="utf-8")
    r = CliRunner().invoke(dataset, ["relabel", "--log-dir", path, "--file", str(f)])
    assert r.exit_code == 1 and "must name call_id and answer" in r.output
    r = CliRunner().invoke(dataset, ["relabel", ids[0], "--log-dir", path, "--file", str(f)])
    assert r.exit_code == 2 and "not both" in r.output
    # the one-call form still works
    r = CliRunner().invoke(dataset, ["relabel", ids[0], "--log-dir", path, "--answer", "one"])
    assert r.exit_code == 0 and [g["value"] for g in relabels(path)] == ["one"]
