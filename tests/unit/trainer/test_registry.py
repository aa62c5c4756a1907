"""The model registry: versions, records, listing, and the `models` commands."""

from __future__ import annotations

import json
import os
import threading

import pytest
from click.testing import CliRunner

from tests.support.tiny_model import log_extraction_task
from trainer.cli import models
from trainer.dataset import build_dataset
from trainer.errors import RegistryError
from trainer.registry import ModelVersion, Registry


def test_versions_count_per_name_and_never_collide(log_dir):
    registry = Registry(log_dir)
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(registry.allocate("ex-lora"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got, key=lambda v: int(v.rsplit("v", 1)[1])) == [f"ex-lora-v{i}" for i in range(1, 9)]
    assert registry.allocate("other") == "other-v1"
    with pytest.raises(RegistryError, match="invalid model name"):
        registry.allocate("../x")


def test_records_round_trip_and_update(log_dir):
    registry = Registry(log_dir)
    mv = registry.save(
        ModelVersion(
            version=registry.allocate("m"),
            kind="lora",
            base_model="b",
            status="training",
            hyperparameters={"lora_r": 8},
        )
    )
    assert mv.created_at and mv.updated_at
    done = registry.update(mv.version, status="ready", metrics={"eval_loss_after": 0.5})
    assert registry.get("m-v1") == done
    assert (done.status, done.metrics, done.created_at) == ("ready", {"eval_loss_after": 0.5}, mv.created_at)
    with open(os.path.join(log_dir, "models", "m-v1", "model.json")) as f:
        assert json.load(f)["hyperparameters"] == {"lora_r": 8}
    with pytest.raises(RegistryError, match="invalid status"):
        registry.update("m-v1", status="shiny")
    with pytest.raises(RegistryError, match="no model version 'nope'"):
        registry.get("nope")


def test_register_needs_an_adapter_or_a_hosted_id(log_dir, tmp_path):
    registry = Registry(log_dir)
    with pytest.raises(RegistryError, match="needs an adapter path or a hosted model id"):
        registry.register("x", base_model="b")
    with pytest.raises(RegistryError, match="no adapter directory"):
        registry.register("x", base_model="b", adapter_path=str(tmp_path / "missing"))
    mv = registry.register("x", base_model="gpt-4o-mini", kind="hosted", hosted_model="ft:gpt-4o-mini:o::1")
    assert mv.served_model == "ft:gpt-4o-mini:o::1"


def test_models_commands(log_dir, tmp_path):
    log_extraction_task(log_dir, 20)
    dv = build_dataset(log_dir, "ex")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    runner = CliRunner()
    reg = runner.invoke(
        models,
        [
            "register",
            "ext",
            "--base",
            "Qwen/Qwen2.5-0.5B-Instruct",
            "--adapter",
            str(adapter),
            "--dataset",
            "ex@v1",
            "--metric",
            "exact_match=0.8",
            "--log-dir",
            log_dir,
        ],
    )
    assert reg.exit_code == 0, reg.output
    assert reg.stdout == "registered ext-v1\n"
    listing = json.loads(runner.invoke(models, ["list", "--json", "--log-dir", log_dir]).stdout)
    (record,) = listing
    assert (record["version"], record["kind"], record["status"]) == ("ext-v1", "lora", "ready")
    assert record["dataset"] == {"name": "ex", "version": 1, "content_hash": dv.manifest["content_hash"]}
    assert record["metrics"] == {"exact_match": 0.8}
    text = runner.invoke(models, ["list", "--log-dir", log_dir]).stdout
    assert text.startswith("ext-v1") and "dataset ex@v1" in text
    shown = json.loads(runner.invoke(models, ["show", "ext-v1", "--log-dir", log_dir]).stdout)
    assert shown == record
    missing = runner.invoke(models, ["show", "nope", "--log-dir", log_dir])
    assert missing.exit_code == 1 and missing.output.startswith("Error: no model version 'nope'")


def test_log_dir_comes_from_the_environment(log_dir, tmp_path):
    Registry(log_dir).register("x", base_model="b", kind="hosted", hosted_model="ft:x")
    result = CliRunner().invoke(models, ["list", "--json"], env={"SHADOWTUNE_LOG_DIR": log_dir})
    assert [r["version"] for r in json.loads(result.stdout)] == ["x-v1"]


def test_a_fine_tune_inherits_its_base_models_family_along_the_lineage(tmp_path):
    from trainer.registry import Registry

    reg = Registry(str(tmp_path))
    first = reg.register("support-ft", base_model="gpt-4o-mini", hosted_model="ft:gpt-4o-mini:acme::7")
    second = reg.register("support-ft", base_model=first.version, hosted_model="support-ft-7")
    local = reg.register("local", base_model="/models/some-base", hosted_model="local-lora")
    recorded = reg.register("tagged", base_model="/models/qwen", hosted_model="tagged-lora", family="qwen")
    fams = reg.families({"gpt-4o-mini": "openai"})
    assert fams[first.version] == fams["ft:gpt-4o-mini:acme::7"] == "openai"
    assert fams[second.version] == fams["support-ft-7"] == "openai"  # trained from a registered version
    assert local.version not in fams and "local-lora" not in fams  # unknown: left out, never guessed
    assert fams[recorded.version] == fams["tagged-lora"] == "qwen"
    assert reg.families({}) == {recorded.version: "qwen", "tagged-lora": "qwen"}


def _bump_own_field(log_dir: str, version: str, key: str, rounds: int, start, regressions) -> None:
    """Set the field ``key`` to "1".."rounds"; count the times a re-read shows an older value."""
    registry = Registry(log_dir)
    start.wait()
    for i in range(1, rounds + 1):
        registry.update(version, **{key: str(i)})
        if int(getattr(registry.get(version), key) or 0) < i:  # only this process writes `key`
            with regressions.get_lock():
                regressions.value += 1


def test_concurrent_updates_from_processes_lose_nothing(log_dir):
    import multiprocessing

    registry = Registry(log_dir)
    mv = registry.save(ModelVersion(version=registry.allocate("m"), kind="lora", base_model="b"))
    ctx = multiprocessing.get_context("fork")
    start, regressions = ctx.Event(), ctx.Value("i", 0)
    keys = ["error", "family", "provider", "job_id"]  # each process changes its own field
    procs = [
        ctx.Process(target=_bump_own_field, args=(log_dir, mv.version, k, 60, start, regressions))
        for k in keys
    ]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert regressions.value == 0
    final = registry.get(mv.version)
    assert [getattr(final, k) for k in keys] == ["60"] * 4


def test_update_applies_a_change_to_the_record_as_it_is_now(log_dir):
    registry = Registry(log_dir)
    mv = registry.save(ModelVersion(version=registry.allocate("m"), kind="lora", base_model="b"))
    registry.update(mv.version, metrics={"a": 1})  # another process, after `mv` was read
    done = registry.update(mv.version, lambda fresh: fresh.metrics.update(b=2), status="ready")
    stored = registry.get(mv.version)
    assert (done.metrics, done.status) == ({"a": 1, "b": 2}, "ready") == (stored.metrics, stored.status)


def test_update_of_a_missing_version_leaves_no_folder(log_dir):
    registry = Registry(log_dir)
    registry.allocate("m")
    with pytest.raises(RegistryError, match="no model version 'm-v7'"):
        registry.update("m-v7", status="ready")
    assert not os.path.exists(registry.path("m-v7"))
    assert registry.allocate("m") == "m-v2"


def test_a_record_that_is_not_an_object_is_a_registry_error(log_dir):
    registry = Registry(log_dir)
    for n, text in enumerate(["[]", "null", '"x"']):
        version = registry.allocate("bad")
        with open(os.path.join(registry.path(version), "model.json"), "w") as f:
            f.write(text)
        with pytest.raises(RegistryError, match=f"the record of 'bad-v{n + 1}' is unreadable"):
            registry.get(version)
    result = CliRunner().invoke(models, ["show", "bad-v1", "--log-dir", log_dir])
    assert result.exit_code == 1 and "Error: the record of 'bad-v1' is unreadable" in result.output
