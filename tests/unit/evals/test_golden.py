"""Examples from trainer datasets and golden files."""

from __future__ import annotations

import json

import pytest
from evals_traffic import write_dataset

from evals.errors import SourceError
from evals.golden.sets import read_dataset, read_golden, score


def test_a_dataset_split_reads_as_examples_with_the_last_assistant_message_as_reference(log_dir):
    write_dataset(log_dir, "tickets", [("q1", "a1", "train"), ("q2", "a2", "test"), ("q3", "a3", "test")])
    test = read_dataset(log_dir, "tickets")
    assert [(e.example_id, e.messages, e.reference) for e in test] == [
        ("tickets-1", [{"role": "user", "content": "q2"}], "a2"),
        ("tickets-2", [{"role": "user", "content": "q3"}], "a3"),
    ]
    assert len(read_dataset(log_dir, "tickets", split=None)) == 3
    with pytest.raises(SourceError, match="no rows in split 'validation'"):
        read_dataset(log_dir, "tickets", split="validation")
    with pytest.raises(SourceError, match="no dataset 'missing'"):
        read_dataset(log_dir, "missing")


def test_golden_files_in_jsonl_and_yaml(tmp_path):
    jl = tmp_path / "g.jsonl"
    jl.write_text(
        json.dumps(
            {
                "id": "x",
                "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            }
        )
        + "\n"
        + json.dumps({"input": "2+2", "expected": {"answer": 4}, "label": "math"})
        + "\n"
    )
    a, b = read_golden(jl)
    assert (a.example_id, a.reference) == ("x", "hello")
    assert b.messages == [{"role": "user", "content": "2+2"}] and json.loads(b.reference) == {"answer": 4}
    assert b.meta == {"label": "math"}
    y = tmp_path / "g.yaml"
    y.write_text("examples:\n  - input: hi\n    expected: hello\n")
    assert read_golden(y)[0].reference == "hello"
    y.write_text("- output: x\n")
    with pytest.raises(SourceError, match="neither messages nor input"):
        read_golden(y)


def test_score_counts_failed_calls_as_empty_answers(tmp_path):
    p = tmp_path / "g.jsonl"
    p.write_text("\n".join(json.dumps({"input": str(i), "expected": str(i)}) for i in range(4)))
    report = score(read_golden(p), ["0", "1", None, "x"], ["exact_match"], model="m", source="golden")
    assert report.failed == 1 and report.metrics == {"exact_match": {"exact_match": 0.5}}


def test_a_trainer_dataset_reads_its_latest_version_and_only_its_examples(tmp_path):
    from evals.golden.sets import read_dataset
    from tests.support.tiny_model import log_extraction_task
    from trainer.dataset import build_dataset

    log_dir = str(tmp_path / "log")
    log_extraction_task(log_dir, 60)
    v1 = build_dataset(log_dir, "orders", warn=False)
    log_extraction_task(log_dir, 60, seed=7, start_us=1_700_000_100_000_000)
    v2 = build_dataset(log_dir, "orders", warn=False)
    assert (v1.version, v2.version) == (1, 2)
    assert v2.splits["test"] != v1.splits["test"]
    assert len(read_dataset(log_dir, "orders", split="test")) == v2.splits["test"]
    assert len(read_dataset(log_dir, "orders@v1", split="test")) == v1.splits["test"]


def test_json_metrics_score_runaway_brackets_as_invalid_instead_of_raising():
    from evals.golden.metrics import compute_metrics

    runaway = "[" * 5000  # a model looping on "[" until max_tokens
    scores = compute_metrics(["json_valid", "json_fields"], [runaway, '{"a": 1}'], ['{"a": 1}', '{"a": 1}'])
    assert scores["json_valid"]["json_valid"] == 0.5
    assert scores["json_fields"]["recall"] == 0.5
