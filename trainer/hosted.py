"""Hosted fine-tuning through an OpenAI-compatible fine-tuning API.

`train_hosted` exports the dataset's train split as OpenAI chat JSONL (the test split is
never uploaded unless ``validation`` is set, and then only as a validation file, which the
provider does not train on), uploads it (``POST /files``, purpose ``fine-tune``), creates a
job (``POST /fine_tuning/jobs``, supervised method), registers the model version at once
(status ``queued``, with the job id, so an interrupted wait can be picked up with
`refresh_hosted`), then polls the job (``GET /fine_tuning/jobs/{id}`` and its ``/events``)
until it ends, reporting progress, and records the fine-tuned model id.

Any provider that speaks this API works through ``base_url``: OpenAI by default
(``OPENAI_BASE_URL``, key from ``OPENAI_API_KEY``).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import httpx

from trainer.dataset import DatasetVersion, load_dataset
from trainer.errors import HostedError
from trainer.export import export_dataset
from trainer.registry import ModelVersion, Registry

PROVIDERS = ("openai",)
DEFAULT_BASE_URL = "https://api.openai.com/v1"
_TERMINAL = {"succeeded": "ready", "failed": "failed", "cancelled": "cancelled"}
_STATUS = {"validating_files": "queued", "queued": "queued", "running": "training", **_TERMINAL}

Progress = Callable[[str], None]


class HostedClient:
    """A thin client of an OpenAI-compatible fine-tuning API."""

    def __init__(self, base_url: str, api_key: str | None, *, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _check(self, resp: httpx.Response, what: str) -> dict[str, Any]:
        if resp.status_code >= 400:
            try:
                message = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = resp.text[:300]
            raise HostedError(f"{what} failed ({resp.status_code}): {message}", status_code=resp.status_code)
        data: dict[str, Any] = resp.json()
        return data

    def _request(self, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any]:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise HostedError(f"{what} failed: cannot reach {self.base_url}: {exc}") from exc
        return self._check(resp, what)

    def upload(self, path: str) -> str:
        with open(path, "rb") as f:
            files = {"file": (os.path.basename(path), f, "application/jsonl")}
            data = self._request("POST", "/files", "file upload", data={"purpose": "fine-tune"}, files=files)
        return str(data["id"])

    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", "/fine_tuning/jobs", "fine-tuning job creation", json=body)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/fine_tuning/jobs/{job_id}", "job status")

    def events(self, job_id: str, after: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": 100}
        if after:
            params["after"] = after
        data = self._request("GET", f"/fine_tuning/jobs/{job_id}/events", "job events", params=params)
        return list(data.get("data") or [])


def _client(base_url: str | None, api_key: str | None) -> HostedClient:
    return HostedClient(
        base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL,
        api_key or os.environ.get("OPENAI_API_KEY"),
    )


def train_hosted(
    log_dir: str,
    base_model: str,
    dataset: str | DatasetVersion,
    *,
    provider: str = "openai",
    base_url: str | None = None,
    api_key: str | None = None,
    name: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
    suffix: str | None = None,
    seed: int | None = None,
    validation: bool = False,
    wait: bool = True,
    poll_interval: float = 15.0,
    timeout: float | None = None,
    on_progress: Progress | None = None,
) -> ModelVersion:
    """Run a hosted fine-tuning job on a dataset's train split and register the result.

    Args:
        log_dir: the call log directory (datasets and registry).
        base_model: the provider's base model id (e.g. ``gpt-4o-mini-2024-07-18``).
        dataset: a `DatasetVersion`, or ``NAME`` / ``NAME@vN``.
        provider: ``openai`` (any OpenAI-compatible fine-tuning API, see ``base_url``).
        base_url: the API's base URL (``OPENAI_BASE_URL``, else OpenAI's).
        api_key: the API key (``OPENAI_API_KEY`` by default).
        name: the model name (versions are ``<name>-v<N>``); ``<dataset>-hosted`` by default.
        hyperparameters: e.g. ``{"n_epochs": 3}`` (the provider's defaults otherwise).
        suffix: the provider's model-name suffix (the dataset name by default).
        seed: the job's seed.
        validation: also upload the test split as the validation file (never trained on).
        wait: poll until the job ends; otherwise return the ``queued`` version at once.
        poll_interval: seconds between polls.
        timeout: give up waiting after this many seconds (the job keeps running; see `refresh_hosted`).
        on_progress: called with each progress line (job events and status changes).

    Raises:
        HostedError: the provider refused a request, the job failed or was cancelled, or the wait timed out.
    """
    if provider not in PROVIDERS:
        raise HostedError(f"unknown provider {provider!r}: use one of {', '.join(PROVIDERS)}")
    dv = dataset if isinstance(dataset, DatasetVersion) else load_dataset(log_dir, dataset)
    registry = Registry(log_dir)
    client = _client(base_url, api_key)
    try:
        with tempfile.TemporaryDirectory(prefix="shadowtune-export-") as tmp:
            export_dataset(dv, "openai", tmp)
            training_file = client.upload(os.path.join(tmp, "train.jsonl"))
            validation_file = client.upload(os.path.join(tmp, "test.jsonl")) if validation else None
        body: dict[str, Any] = {
            "model": base_model,
            "training_file": training_file,
            "suffix": (suffix or dv.name)[:64],
            "method": {"type": "supervised", "supervised": {"hyperparameters": dict(hyperparameters or {})}},
            "metadata": {"shadowtune_dataset": dv.ref},
        }
        if validation_file:
            body["validation_file"] = validation_file
        if seed is not None:
            body["seed"] = seed
        job = client.create_job(body)
        version = registry.allocate(name or f"{dv.name}-hosted")
        mv = registry.save(
            ModelVersion(
                version=version,
                kind="hosted",
                base_model=base_model,
                status=_STATUS.get(job.get("status", "queued"), "queued"),
                provider=provider,
                provider_base_url=client.base_url,
                job_id=str(job["id"]),
                dataset={
                    "name": dv.name,
                    "version": dv.version,
                    "content_hash": dv.manifest.get("content_hash"),
                },
                hyperparameters={**(hyperparameters or {}), **({"seed": seed} if seed is not None else {})},
                metrics={"training_file": training_file, "validation_file": validation_file},
            )
        )
        if on_progress:
            on_progress(f"created job {job['id']} for {mv.version} ({dv.splits['train']} training examples)")
        if not wait:
            return mv
        return _wait(registry, client, mv, poll_interval, timeout, on_progress)
    finally:
        client.close()


def refresh_hosted(
    log_dir: str,
    version: str,
    *,
    api_key: str | None = None,
    wait: bool = False,
    poll_interval: float = 15.0,
    timeout: float | None = None,
    on_progress: Progress | None = None,
) -> ModelVersion:
    """Read a hosted version's job again (and optionally wait for it); updates the registry."""
    registry = Registry(log_dir)
    mv = registry.get(version)
    if mv.kind != "hosted" or not mv.job_id:
        raise HostedError(f"{version} is not a hosted fine-tuning job")
    client = _client(mv.provider_base_url, api_key)
    try:
        if wait:
            return _wait(registry, client, mv, poll_interval, timeout, on_progress)
        return _apply(registry, mv, client.job(mv.job_id))
    finally:
        client.close()


def _apply(registry: Registry, mv: ModelVersion, job: dict[str, Any]) -> ModelVersion:
    error = (job.get("error") or {}).get("message") if isinstance(job.get("error"), dict) else None

    def change(fresh: ModelVersion) -> None:
        # On the record as it is now (``mv`` may be a poll interval old): other processes'
        # metrics and deployments are kept.
        fresh.status = _STATUS.get(str(job.get("status")), fresh.status)
        fresh.hosted_model = job.get("fine_tuned_model") or fresh.hosted_model
        for key in ("trained_tokens", "result_files", "estimated_finish", "finished_at"):
            if job.get(key) is not None:
                fresh.metrics[key] = job[key]
        fresh.error = error

    return registry.update(mv.version, change)


def _wait(
    registry: Registry,
    client: HostedClient,
    mv: ModelVersion,
    poll_interval: float,
    timeout: float | None,
    on_progress: Progress | None,
) -> ModelVersion:
    job_id = mv.job_id
    assert job_id is not None
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: set[str] = set()
    last_status = None
    while True:
        job = client.job(job_id)
        events = client.events(job_id)
        for ev in sorted(events, key=lambda e: (e.get("created_at") or 0, str(e.get("id")))):
            if ev.get("id") not in seen:
                seen.add(str(ev.get("id")))
                if on_progress and ev.get("message"):
                    on_progress(str(ev["message"]))
        mv = _apply(registry, mv, job)
        if on_progress and job.get("status") != last_status:
            on_progress(f"job {mv.job_id}: {job.get('status')}")
            last_status = job.get("status")
        if job.get("status") in _TERMINAL:
            break
        if deadline is not None and time.monotonic() >= deadline:
            raise HostedError(
                f"job {mv.job_id} is still {job.get('status')}; it keeps running: "
                f"`shadowtune train status {mv.version}` picks it up",
                job_id=mv.job_id,
            )
        time.sleep(poll_interval)
    if mv.status != "ready" or not mv.hosted_model:
        raise HostedError(
            f"fine-tuning job {mv.job_id} {job.get('status')}: {mv.error or 'no fine-tuned model'}",
            job_id=mv.job_id,
        )
    return mv
