"""A fake OpenAI fine-tuning API: a real HTTP server (Starlette under uvicorn) on 127.0.0.1:0.

It implements what `trainer.hosted` calls: ``POST /v1/files`` (multipart, checks that the
file is chat fine-tuning JSONL), ``POST /v1/fine_tuning/jobs``, ``GET /v1/fine_tuning/jobs/{id}``
(each read moves the job one step: validating_files -> queued -> running -> succeeded) and
``GET /v1/fine_tuning/jobs/{id}/events`` (newest first, as OpenAI does). A base model named
``fail-*`` makes the job fail; a missing or wrong API key answers 401.
"""

from __future__ import annotations

import json
import threading
import time
from email.parser import BytesParser
from email.policy import default
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """``{field: (filename, bytes)}`` of a multipart/form-data body (stdlib only)."""
    message = BytesParser(policy=default).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    out = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        out[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return out


STEPS = ["validating_files", "queued", "running", "succeeded"]


class FakeFineTuning:
    def __init__(self, api_key: str = "sk-fake") -> None:
        self.api_key = api_key
        self.files: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[tuple[str, str]] = []
        app = Starlette(
            routes=[
                Route("/v1/files", self.upload, methods=["POST"]),
                Route("/v1/fine_tuning/jobs", self.create, methods=["POST"]),
                Route("/v1/fine_tuning/jobs/{job_id}", self.get, methods=["GET"]),
                Route("/v1/fine_tuning/jobs/{job_id}/events", self.list_events, methods=["GET"]),
            ]
        )
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> FakeFineTuning:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), (
                "fake fine-tuning API did not start"
            )
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    @property
    def base_url(self) -> str:
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    @staticmethod
    def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}},
            status_code=status,
        )

    def _authorized(self, request: Request) -> bool:
        self.requests.append((request.method, request.url.path))
        return request.headers.get("authorization") == f"Bearer {self.api_key}"

    async def upload(self, request: Request) -> JSONResponse:
        if not self._authorized(request):
            return self._error(401, "Incorrect API key provided")
        form = _multipart(request.headers["content-type"], await request.body())
        if form.get("purpose", (None, b""))[1] != b"fine-tune":
            return self._error(400, "purpose must be fine-tune", "purpose")
        filename, content = form["file"]
        lines = content.decode().splitlines()
        for n, line in enumerate(lines, 1):
            record = json.loads(line)
            roles = [m["role"] for m in record["messages"]]
            if roles[-1] != "assistant" or not set(roles) <= {"system", "user", "assistant", "tool"}:
                return self._error(400, f"line {n}: invalid roles {roles}", "file")
        file_id = f"file-{len(self.files) + 1}"
        self.files[file_id] = {"id": file_id, "filename": filename, "lines": lines}
        return JSONResponse(
            {"id": file_id, "object": "file", "purpose": "fine-tune", "bytes": sum(map(len, lines))}
        )

    async def create(self, request: Request) -> JSONResponse:
        if not self._authorized(request):
            return self._error(401, "Incorrect API key provided")
        body = await request.json()
        if body.get("training_file") not in self.files:
            return self._error(400, f"invalid training_file: {body.get('training_file')}", "training_file")
        job_id = f"ftjob-{len(self.jobs) + 1}"
        self.jobs[job_id] = {
            "id": job_id,
            "object": "fine_tuning.job",
            "model": body["model"],
            "status": STEPS[0],
            "fine_tuned_model": None,
            "training_file": body["training_file"],
            "request": body,
            "created_at": int(time.time()),
            "error": None,
        }
        self.events[job_id] = []
        self._event(job_id, "Validating training file")
        return JSONResponse(self._public(job_id))

    def _event(self, job_id: str, message: str) -> None:
        evs = self.events[job_id]
        evs.append(
            {
                "id": f"ftevent-{job_id}-{len(evs)}",
                "object": "fine_tuning.job.event",
                "created_at": len(evs),
                "level": "info",
                "message": message,
            }
        )

    def _public(self, job_id: str) -> dict[str, Any]:
        return {k: v for k, v in self.jobs[job_id].items() if k != "request"}

    async def get(self, request: Request) -> JSONResponse:
        if not self._authorized(request):
            return self._error(401, "Incorrect API key provided")
        job = self.jobs.get(request.path_params["job_id"])
        if job is None:
            return self._error(404, "no such job")
        if job["status"] not in ("succeeded", "failed"):
            step = STEPS[STEPS.index(job["status"]) + 1]
            if step == "succeeded" and job["model"].startswith("fail-"):
                job["status"] = "failed"
                job["error"] = {
                    "code": "invalid_training_file",
                    "message": "Training file has too few examples",
                    "param": "training_file",
                }
            else:
                job["status"] = step
                if step == "running":
                    self._event(job["id"], "Step 1/10: training loss=1.23")
                if step == "succeeded":
                    job["fine_tuned_model"] = (
                        f"ft:{job['model']}:shadowtune:{job['request'].get('suffix')}:abc123"
                    )
                    job["trained_tokens"] = 4242
                    self._event(job["id"], "The job has successfully completed")
        return JSONResponse(self._public(job["id"]))

    async def list_events(self, request: Request) -> JSONResponse:
        if not self._authorized(request):
            return self._error(401, "Incorrect API key provided")
        evs = list(reversed(self.events[request.path_params["job_id"]]))
        return JSONResponse({"object": "list", "data": evs, "has_more": False})
