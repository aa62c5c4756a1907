"""Hosted fine-tuning against a fake OpenAI fine-tuning API served on loopback."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.support.tiny_model import log_extraction_task
from tests.unit.trainer.fake_finetune import FakeFineTuning
from trainer.cli import train
from trainer.dataset import build_dataset
from trainer.errors import HostedError
from trainer.hosted import refresh_hosted, train_hosted
from trainer.registry import Registry


@pytest.fixture
def provider():
    fake = FakeFineTuning().start()
    yield fake
    fake.stop()


@pytest.fixture
def dataset(log_dir):
    log_extraction_task(log_dir, 120)
    return build_dataset(log_dir, "ex")


def test_a_job_is_uploaded_created_polled_and_registered(log_dir, provider, dataset):
    lines: list[str] = []
    mv = train_hosted(
        log_dir,
        "gpt-4o-mini-2024-07-18",
        "ex",
        base_url=provider.base_url,
        api_key="sk-fake",
        hyperparameters={"n_epochs": 2},
        seed=7,
        poll_interval=0.01,
        on_progress=lines.append,
    )
    assert mv.status == "ready"
    assert mv.hosted_model == "ft:gpt-4o-mini-2024-07-18:shadowtune:ex:abc123"
    assert mv.served_model == mv.hosted_model
    assert (mv.kind, mv.provider, mv.job_id, mv.version) == ("hosted", "openai", "ftjob-1", "ex-hosted-v1")
    assert mv.dataset == {"name": "ex", "version": 1, "content_hash": dataset.manifest["content_hash"]}
    assert mv.metrics["trained_tokens"] == 4242
    assert Registry(log_dir).get(mv.version).to_dict() == mv.to_dict()

    (uploaded,) = provider.files.values()
    assert len(uploaded["lines"]) == dataset.splits["train"]
    test_answers = {json.dumps(e.messages) for e in dataset.examples("test")}
    assert not any(
        json.dumps(json.loads(line)["messages"][:-1]) in test_answers for line in uploaded["lines"]
    )
    job = provider.jobs["ftjob-1"]["request"]
    assert job["method"] == {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}
    assert (job["seed"], job["suffix"], job["model"]) == (7, "ex", "gpt-4o-mini-2024-07-18")
    assert "Step 1/10: training loss=1.23" in lines
    assert lines[-1] == "job ftjob-1: succeeded"


def test_a_failed_job_is_recorded_and_raised(log_dir, provider, dataset):
    with pytest.raises(HostedError, match="ftjob-1 failed: Training file has too few examples"):
        train_hosted(
            log_dir, "fail-model", "ex", base_url=provider.base_url, api_key="sk-fake", poll_interval=0.01
        )
    (mv,) = Registry(log_dir).list()
    assert (mv.status, mv.error, mv.hosted_model) == ("failed", "Training file has too few examples", None)


def test_a_refused_request_names_the_provider_error(log_dir, provider, dataset):
    with pytest.raises(HostedError, match=r"file upload failed \(401\): Incorrect API key provided") as info:
        train_hosted(log_dir, "gpt-4o-mini", "ex", base_url=provider.base_url, api_key="sk-wrong")
    assert info.value.status_code == 401
    assert Registry(log_dir).list() == []


def test_no_wait_then_status_picks_the_job_up(log_dir, provider, dataset, monkeypatch):
    mv = train_hosted(log_dir, "gpt-4o-mini", "ex", base_url=provider.base_url, api_key="sk-fake", wait=False)
    assert mv.status == "queued" and mv.hosted_model is None
    assert refresh_hosted(log_dir, mv.version, api_key="sk-fake").status == "queued"
    done = refresh_hosted(log_dir, mv.version, api_key="sk-fake", wait=True, poll_interval=0.01)
    assert done.status == "ready" and done.hosted_model.startswith("ft:gpt-4o-mini")


def test_cli_runs_a_hosted_job(log_dir, provider, dataset):
    result = CliRunner().invoke(
        train,
        [
            "hosted",
            "--base",
            "gpt-4o-mini",
            "--dataset",
            "ex@v1",
            "--base-url",
            provider.base_url,
            "--poll-interval",
            "0.01",
            "--epochs",
            "3",
            "--log-dir",
            log_dir,
            "--json",
        ],
        env={"OPENAI_API_KEY": "sk-fake"},
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["status"] == "ready" and record["hyperparameters"] == {"n_epochs": 3}
    failed = CliRunner().invoke(
        train,
        [
            "hosted",
            "--base",
            "gpt-4o-mini",
            "--dataset",
            "ex",
            "--base-url",
            provider.base_url,
            "--log-dir",
            log_dir,
        ],
        env={"OPENAI_API_KEY": "sk-wrong"},
    )
    assert failed.exit_code == 1
    assert "Error: file upload failed (401): Incorrect API key provided" in failed.output


def test_polls_keep_what_others_wrote_on_the_record_meanwhile(log_dir, provider, dataset):
    registry = Registry(log_dir)

    def meanwhile(line: str) -> None:  # between two polls, another writer annotates the version
        if line.startswith("job ftjob-1: ") and not line.endswith("succeeded"):
            (mv,) = registry.list()
            registry.update(mv.version, lambda fresh: fresh.metrics.update(note="kept"))

    mv = train_hosted(
        log_dir,
        "gpt-4o-mini",
        "ex",
        base_url=provider.base_url,
        api_key="sk-fake",
        poll_interval=0.01,
        on_progress=meanwhile,
    )
    assert mv.status == "ready" and mv.metrics["trained_tokens"] == 4242
    assert mv.metrics["note"] == "kept" == registry.get(mv.version).metrics["note"]
