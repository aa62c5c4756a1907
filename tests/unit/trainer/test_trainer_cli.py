"""The `dataset` and `train` commands, and what importing the trainer pulls in."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from tests.support.tiny_model import log_extraction_task
from trainer.cli import dataset, models, train


def run(group, *args, **kwargs):
    return CliRunner().invoke(group, list(args), **kwargs)


def test_importing_the_trainer_imports_neither_torch_nor_the_server():
    code = (
        "import sys, trainer, trainer.cli, trainer.dataset, trainer.export, trainer.hosted, trainer.registry, "
        "trainer.deploy, trainer.lora, trainer.serve; "
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'peft', 'fastapi', 'gateway.app') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_build_list_show_split_and_export(log_dir, tmp_path):
    records = log_extraction_task(log_dir, 120)
    built = run(dataset, "build", "ex", "--route", "extract", "--log-dir", log_dir)
    assert built.exit_code == 0, built.output
    assert built.stdout.startswith("ex@v1: ") and "train" in built.stdout
    manifest = json.loads(
        run(dataset, "build", "ex", "--test-fraction", "0.2", "--json", "--log-dir", log_dir).stdout
    )
    assert manifest["version"] == 2 and manifest["split"]["test_fraction"] == 0.2
    listing = json.loads(run(dataset, "list", "--json", "--log-dir", log_dir).stdout)
    assert [r["dataset"] for r in listing] == ["ex@v1", "ex@v2"]
    assert json.loads(run(dataset, "show", "ex@v1", "--log-dir", log_dir).stdout)["version"] == 1
    test_ids = run(dataset, "split", "ex@v1", "--log-dir", log_dir).stdout.split()
    assert test_ids and set(test_ids) <= {r["call_id"] for r in records}
    out = tmp_path / "export"
    exported = run(dataset, "export", "ex@v1", "--format", "openai", "--out", str(out), "--log-dir", log_dir)
    assert exported.exit_code == 0, exported.output
    assert len((out / "test.jsonl").read_text().splitlines()) == len(test_ids)


def test_relabel_and_exclude_commands_write_events(log_dir):
    records = log_extraction_task(log_dir, 10)
    a, b = records[0]["call_id"], records[1]["call_id"]
    relabelled = run(dataset, "relabel", a, "--log-dir", log_dir, input='{"name": "stdin"}\n')
    assert relabelled.exit_code == 0 and relabelled.stdout.startswith(f"relabelled {a} (evt_")
    assert run(dataset, "exclude", b, "--reason", "pii", "--log-dir", log_dir).exit_code == 0
    manifest = json.loads(
        run(dataset, "build", "ex", "--json", "--near-dup", "1", "--log-dir", log_dir).stdout
    )
    assert manifest["removed"]["excluded"] == 1 and manifest["counts"]["relabelled"] == 1
    unknown = run(dataset, "relabel", "call_nope", "--answer", "x", "--log-dir", log_dir)
    assert unknown.exit_code == 1 and "Error: no call call_nope" in unknown.output


def test_domain_errors_are_one_line(log_dir):
    missing = run(dataset, "export", "nope", "--format", "hf", "--out", "x", "--log-dir", log_dir)
    assert missing.exit_code == 1
    assert missing.output.strip().splitlines() == [
        f"Error: no dataset named 'nope' under {log_dir}/datasets (run `shadowtune dataset build`)"
    ]
    no_log = run(dataset, "build", "ex", "--log-dir", log_dir)
    assert no_log.exit_code == 1 and "no call log at" in no_log.output
    no_model = run(train, "status", "nope", "--log-dir", log_dir)
    assert no_model.exit_code == 1 and "no model version 'nope'" in no_model.output
    assert run(models, "serve", "nope", "--log-dir", log_dir).exit_code == 1


def test_models_register_records_a_family_that_versions_trained_from_it_inherit(log_dir):
    from trainer.registry import Registry

    out = run(models, "register", "base-ft", "--base", "/models/base", "--hosted-model", "base-ft-1",
              "--family", "qwen", "--log-dir", log_dir, "--json")  # fmt: skip
    assert out.exit_code == 0, out.output
    first = json.loads(out.stdout)
    assert first["family"] == "qwen"
    child = run(models, "register", "child", "--base", first["version"], "--hosted-model", "child-1",
                "--log-dir", log_dir, "--json")  # fmt: skip
    assert json.loads(child.stdout)["family"] is None  # not recorded: inherited along the lineage
    assert Registry(log_dir).families({})["child-1"] == "qwen"


def test_build_since_reads_the_same_ages_as_logs_list(log_dir):
    import datetime as dt

    from gateway.cli import main

    now_us = int(dt.datetime.now(dt.UTC).timestamp() * 1_000_000)
    old = log_extraction_task(log_dir, 40, seed=1, start_us=now_us - 3 * 3600 * 1_000_000)
    recent = log_extraction_task(log_dir, 40, seed=2, start_us=now_us - 3600 * 1_000_000)
    built = run(dataset, "build", "ex", "--since", "1.5h", "--near-dup", "1", "--json", "--log-dir", log_dir)
    assert built.exit_code == 0, built.output
    ids = {
        e["call_id"]
        for split in ("train", "test", "golden")
        for e in json.loads(
            run(dataset, "split", "ex", "--split", split, "--json", "--log-dir", log_dir).stdout
        )
    }
    listed = json.loads(
        CliRunner()
        .invoke(main, ["logs", "list", "--since", "1.5h", "-n", "0", "--json", "--log-dir", log_dir])
        .stdout
    )
    assert {r["call_id"] for r in listed} == {r["call_id"] for r in recent}
    assert ids and ids <= {r["call_id"] for r in recent} and not ids & {r["call_id"] for r in old}
