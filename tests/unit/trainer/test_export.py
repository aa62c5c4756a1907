"""Exports validate against their formats, and test rows never reach a training file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tests.support.tiny_model import call_record, event_record, log_extraction_task, write_log
from trainer.dataset import build_dataset
from trainer.errors import ExportError
from trainer.export import export_dataset

ROLES = {"system", "user", "assistant", "tool"}


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]  # every line parses


@pytest.fixture
def dataset(log_dir):
    records = log_extraction_task(log_dir, 200)
    relabels = [event_record(r["call_id"], "relabel", '{"name": "fixed"}') for r in records[:40]]
    golden = call_record([{"role": "user", "content": "a hard one"}], "hard answer", tags=["golden"])
    write_log(log_dir, [golden], relabels)
    return build_dataset(log_dir, "ex", golden_tag="golden")


def inputs(records, key="messages"):
    return {
        json.dumps(r[key][:-1] if key == "messages" else r[key]["messages"], sort_keys=True) for r in records
    }


def test_openai_chat_files(dataset, tmp_path):
    out = str(tmp_path / "openai")
    written = export_dataset(dataset, "openai", out)
    assert written == {
        "train.jsonl": dataset.splits["train"],
        "test.jsonl": dataset.splits["test"],
        "golden.jsonl": 1,
    }
    train, test = read_jsonl(f"{out}/train.jsonl"), read_jsonl(f"{out}/test.jsonl")
    for record in train + test:
        assert set(record) == {"messages"}
        roles = [m["role"] for m in record["messages"]]
        assert set(roles) <= ROLES and roles[-1] == "assistant" and "user" in roles
        assert all(isinstance(m["content"], str) for m in record["messages"])
    assert not inputs(train) & inputs(test)
    assert {json.dumps(e.messages, sort_keys=True) for e in dataset.examples("test")} == inputs(test)
    assert "a hard one" not in json.dumps(train + test)
    meta = json.loads(Path(f"{out}/export.json").read_text())
    assert meta["content_hash"] == dataset.manifest["content_hash"] and meta["version"] == 1


def test_openai_dpo_pairs_from_relabels(dataset, tmp_path):
    out = str(tmp_path / "dpo")
    written = export_dataset(dataset, "openai-dpo", out)
    train, test = read_jsonl(f"{out}/train.jsonl"), read_jsonl(f"{out}/test.jsonl")
    assert written["train.jsonl"] + written["test.jsonl"] == 40
    for record in train + test:
        assert set(record) == {"input", "preferred_output", "non_preferred_output"}
        assert record["input"]["messages"][-1]["role"] == "user"
        assert record["preferred_output"] == [{"role": "assistant", "content": '{"name": "fixed"}'}]
        (rejected,) = record["non_preferred_output"]
        assert rejected["role"] == "assistant" and rejected["content"].startswith('{"name": "')
    assert not inputs(train, "input") & inputs(test, "input")
    test_inputs = {json.dumps(e.messages, sort_keys=True) for e in dataset.examples("test")}
    assert not inputs(train, "input") & test_inputs


def test_dpo_without_pairs_is_an_export_error(log_dir, tmp_path):
    log_extraction_task(log_dir, 30)
    with pytest.raises(ExportError, match="no preference pairs"):
        export_dataset(build_dataset(log_dir, "plain"), "openai-dpo", str(tmp_path / "x"))


def test_hf_loads_with_datasets_in_trl_conversational_format(dataset, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = str(tmp_path / "hf")
    export_dataset(dataset, "hf", out)
    loaded = datasets.load_dataset(out, cache_dir=str(tmp_path / "hf-cache"))  # no shared cache
    assert {k: len(v) for k, v in loaded.items()} == {
        "train": dataset.splits["train"],
        "test": dataset.splits["test"],
    }
    row = loaded["train"][0]
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    assert not {json.dumps(r["messages"][:-1]) for r in loaded["train"]} & {
        json.dumps(r["messages"][:-1]) for r in loaded["test"]
    }


def test_axolotl_config_points_at_the_splits(dataset, tmp_path):
    out = str(tmp_path / "axo")
    export_dataset(dataset, "axolotl", out, base_model="Qwen/Qwen2.5-0.5B-Instruct")
    config = yaml.safe_load(Path(f"{out}/axolotl.yaml").read_text())
    assert config["base_model"] == "Qwen/Qwen2.5-0.5B-Instruct"
    (train,) = config["datasets"]
    (test,) = config["test_datasets"]
    assert (train["path"], train["type"], train["roles_to_train"]) == (
        "train.jsonl",
        "chat_template",
        ["assistant"],
    )
    assert test["path"] == "test.jsonl"
    assert config["adapter"] == "lora" and config["lora_r"] == 8 and config["num_epochs"] == 5
    for name in ("train.jsonl", "test.jsonl"):
        assert os.path.exists(os.path.join(out, name))


def test_unknown_format(dataset, tmp_path):
    with pytest.raises(ExportError, match="unknown export format 'csv'"):
        export_dataset(dataset, "csv", str(tmp_path))


def test_a_re_export_leaves_no_file_of_the_previous_one(dataset, log_dir, tmp_path):
    out = str(tmp_path / "out")
    export_dataset(dataset, "axolotl", out)
    export_dataset(dataset, "openai", out)
    assert os.path.exists(f"{out}/golden.jsonl")
    assert not os.path.exists(f"{out}/axolotl.yaml") and not os.path.exists(f"{out}/README.md")
    plain = build_dataset(log_dir, "plain", golden_tag="none-such")  # no golden split this time
    written = export_dataset(plain, "openai", out)
    assert sorted(os.listdir(out)) == ["export.json", "test.jsonl", "train.jsonl"]
    assert json.loads(Path(f"{out}/export.json").read_text())["files"] == written


def test_a_failed_export_leaves_the_previous_one_as_it_was(dataset, tmp_path):
    out = str(tmp_path / "out")
    written = export_dataset(dataset, "openai-dpo", out)
    before = {n: Path(out, n).read_bytes() for n in os.listdir(out)}
    other_log = str(tmp_path / "other-log")  # a log without relabels: no preference pairs
    log_extraction_task(other_log, 30)
    with pytest.raises(ExportError, match="no preference pairs"):
        export_dataset(build_dataset(other_log, "plain"), "openai-dpo", out)
    assert {n: Path(out, n).read_bytes() for n in os.listdir(out)} == before
    assert len(read_jsonl(f"{out}/train.jsonl")) == written["train.jsonl"]


def test_an_edited_export_json_never_removes_other_files(dataset, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "precious.txt").write_text("mine")
    (out / "export.json").write_text(json.dumps({"format": "hf", "files": {"../precious.txt": 1}}))
    export_dataset(dataset, "openai", str(out))
    assert (tmp_path / "precious.txt").read_text() == "mine"
