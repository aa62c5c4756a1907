"""Deploying a version: the vLLM files, and shadow mode through a real gateway's admin API."""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner

from gateway.store import LogStore
from trainer.cli import models
from trainer.deploy import deploy_version, write_vllm_files
from trainer.errors import ServeError
from trainer.registry import ModelVersion, Registry

TOKEN = "admin-t0ken"


@pytest.fixture
def version(log_dir, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    registry = Registry(log_dir)
    mv = registry.register(
        "ex-lora",
        base_model="Qwen/Qwen2.5-0.5B-Instruct",
        kind="lora",
        adapter_path=str(adapter),
        hyperparameters={"lora_r": 12},
    )
    return mv


def test_vllm_files_serve_the_base_with_the_adapter(version, tmp_path):
    paths = write_vllm_files(version, str(tmp_path / "deploy" / "vllm"), port=8011)
    script = Path(paths["serve.sh"]).read_text()
    args = shlex.split(script.split("exec ", 1)[1].replace("\\\n", " ").replace('"$@"', ""))
    assert args[:3] == ["vllm", "serve", "Qwen/Qwen2.5-0.5B-Instruct"]
    assert "--enable-lora" in args
    assert args[args.index("--lora-modules") + 1] == f"ex-lora-v1={version.adapter_path}"
    assert args[args.index("--max-lora-rank") + 1] == "16"  # 12 rounded up to a rank vLLM supports
    assert args[args.index("--port") + 1] == "8011"
    assert os.access(paths["serve.sh"], os.X_OK)
    config = yaml.safe_load(Path(paths["config.yaml"]).read_text())
    assert config["enable-lora"] is True and config["lora-modules"] == [f"ex-lora-v1={version.adapter_path}"]
    assert "shadowtune models deploy ex-lora-v1" in Path(paths["README.md"]).read_text()


def test_vllm_needs_an_adapter(log_dir):
    mv = Registry(log_dir).register("hosted", base_model="gpt-4o-mini", kind="hosted", hosted_model="ft:x")
    with pytest.raises(ServeError, match="no LoRA adapter"):
        write_vllm_files(mv, "unused")


def test_cli_writes_vllm_files(version, log_dir, tmp_path):
    out = str(tmp_path / "vllm")
    result = CliRunner().invoke(models, ["serve", "ex-lora-v1", "--vllm", "--out", out, "--log-dir", log_dir])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("vllm serve Qwen/Qwen2.5-0.5B-Instruct")
    assert sorted(os.listdir(os.path.join(out, "ex-lora-v1"))) == ["README.md", "config.yaml", "serve.sh"]


def test_deploy_makes_the_version_the_shadow_candidate(
    version, log_dir, make_settings, start_gateway, fake_upstream
):
    gw = start_gateway(
        make_settings(
            server={"admin_token": TOKEN},
            upstreams={"base": {"model": "echo-base"}},
            routes={"extract": {"baseline": "base"}},
        )
    )
    dep = deploy_version(
        log_dir, version.version, "extract", url=gw.url, admin_token=TOKEN, serve_url=fake_upstream.base_url
    )
    assert (dep["upstream"], dep["model"], dep["mode"]) == ("ex-lora-v1", "ex-lora-v1", "shadow")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    route = httpx.get(gw.url + "/admin/routes/extract", headers=headers).json()
    assert (route["candidate"], route["mode"]) == ("ex-lora-v1", "shadow")
    assert Registry(log_dir).get(version.version).deployments[0]["route"] == "extract"

    reply = httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "extract", "messages": [{"role": "user", "content": "hello"}]},
    )
    assert reply.json()["choices"][0]["message"]["content"] == "echo-base: hello"
    rows = []
    for _ in range(100):  # the shadow call runs in the background
        gw.flush()
        rows = LogStore.open(gw.ctx.settings.store.log_dir).sql(
            "SELECT variant, served, upstream, upstream_model, output_text FROM calls ORDER BY variant"
        )
        if len(rows) == 2:
            break
        time.sleep(0.05)
    assert rows == [
        {
            "variant": "baseline",
            "served": True,
            "upstream": "base",
            "upstream_model": "echo-base",
            "output_text": "echo-base: hello",
        },
        {
            "variant": "candidate",
            "served": False,
            "upstream": "ex-lora-v1",
            "upstream_model": "ex-lora-v1",
            "output_text": "ex-lora-v1: hello",
        },
    ]


def test_deploy_errors_are_one_line(version, log_dir, make_settings, start_gateway, fake_upstream):
    gw = start_gateway(
        make_settings(
            server={"admin_token": TOKEN},
            upstreams={"base": {"model": "echo-base"}},
            routes={"extract": {"baseline": "base"}},
        )
    )
    runner = CliRunner()
    base = ["deploy", "ex-lora-v1", "--route", "extract", "--url", gw.url, "--log-dir", log_dir]
    wrong = runner.invoke(models, [*base, "--serve-url", fake_upstream.base_url, "--admin-token", "nope"])
    assert wrong.exit_code == 1
    assert "HTTP 401: invalid admin token" in wrong.output
    missing = runner.invoke(models, base, env={"SHADOWTUNE_ADMIN_TOKEN": TOKEN})
    assert "pass --serve-url" in missing.output
    ok = runner.invoke(
        models,
        [*base, "--serve-url", fake_upstream.base_url, "--json"],
        env={"SHADOWTUNE_ADMIN_TOKEN": TOKEN},
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["route_state"]["candidate"] == "ex-lora-v1"
    down = runner.invoke(
        models,
        [
            "deploy",
            "ex-lora-v1",
            "--route",
            "extract",
            "--url",
            "http://127.0.0.1:9",
            "--serve-url",
            "http://x/v1",
            "--log-dir",
            log_dir,
        ],
    )
    assert down.exit_code == 1 and "cannot reach the gateway at http://127.0.0.1:9" in down.output


def test_a_version_that_is_not_ready_is_not_deployed(log_dir):
    registry = Registry(log_dir)
    registry.save(
        ModelVersion(version=registry.allocate("wip"), kind="lora", base_model="b", status="training")
    )
    with pytest.raises(ServeError, match="wip-v1 is training, not ready"):
        deploy_version(log_dir, "wip-v1", "extract", serve_url="http://x/v1")


class _HeldAdmin:
    """A stand-in for the gateway's admin API on loopback whose ``PATCH`` of a route named in
    ``hold`` waits for ``release``: a deploy stuck there has read its record, not yet written it."""

    def __init__(self, hold: str) -> None:
        import http.server
        import threading

        self.hold, self.release, self.held = hold, threading.Event(), threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer({"candidate_transform": None})

            def do_PUT(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                self._answer({})

            def do_PATCH(self) -> None:
                change = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                route = self.path.rsplit("/", 1)[1]
                if route == outer.hold:
                    outer.held.set()
                    outer.release.wait(30)
                self._answer({"route": route, **change})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_concurrent_deploys_of_a_version_keep_every_deployment(version, log_dir):
    import threading

    admin = _HeldAdmin(hold="first")
    try:
        errors: list[BaseException] = []

        def deploy_first() -> None:
            try:
                deploy_version(log_dir, version.version, "first", url=admin.url, serve_url="http://x/v1")
            except BaseException as exc:  # reported below
                errors.append(exc)

        slow = threading.Thread(target=deploy_first)
        slow.start()
        assert admin.held.wait(30)  # the first deploy has read the record and waits on the gateway
        deploy_version(log_dir, version.version, "second", url=admin.url, serve_url="http://x/v1")
        admin.release.set()
        slow.join(30)
        assert not errors
    finally:
        admin.stop()
    routes = sorted(d["route"] for d in Registry(log_dir).get(version.version).deployments)
    assert routes == ["first", "second"]
