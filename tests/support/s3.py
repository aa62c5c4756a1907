"""A real S3-compatible server on loopback for the tests: ``moto_server`` (from ``moto[server]``)
as a subprocess, with the ``AWS_*`` environment that points pyarrow and delta-rs at it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pyarrow.fs as pafs

from tests.support.servers import free_port, wait_until_responds

SECRET = "moto-secret-" + uuid.uuid4().hex[:8]


class MotoServer:
    """``moto_server -H 127.0.0.1 -p PORT``; `env` is what a client process needs."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "moto-key",
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self) -> MotoServer:
        exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
        self.proc = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until_responds(self.endpoint + "/moto-api/", timeout=30)
        return self

    def create_bucket(self, name: str | None = None) -> str:
        name = name or "log-" + uuid.uuid4().hex[:10]
        fs = pafs.S3FileSystem(
            endpoint_override=self.endpoint,
            access_key="moto-key",
            secret_key=SECRET,
            region="us-east-1",
            scheme="http",
            allow_bucket_creation=True,
        )
        fs.create_dir(name)
        return name

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)


def wait_for(predicate: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False
