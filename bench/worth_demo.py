"""The walkthrough's "Is it worth it?" run on the tiny model: a sweep's best adapter in shadow, then canary.

Reproduces the outputs in docs/walkthrough.md ("Is it worth it? A sweep and the report on the
tiny model"), after the sweep there has run in ``DIR``:

    python bench/worth_demo.py DIR

It serves the sweep's best version (``shadowtune models serve``), starts a gateway (in this
process) whose baseline is the test suite's prompted extraction model (`tests.support.fake_upstream`,
``extract-base``, priced as gpt-4o-mini) and whose candidate is that adapter (priced at a notional
self-hosting rate), sends 60 calls in shadow, switches the route to a 50 % canary through the
admin API, sends 80 more (half streamed) with a thumb on some answers, writes ``DIR/shadowtune.yaml``
with the prices and prints the command that reports on it.
"""

from __future__ import annotations

import glob
import json
import os
import random
import socket
import subprocess
import sys
import time

import httpx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import GatewayServer
from tests.support.tiny_model import extraction_example

PRICES = {"base": (0.15, 0.60), "tiny": (0.02, 0.02)}  # USD per million tokens


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(root: str) -> None:
    from gateway.config import Settings

    log_dir = os.path.join(root, "log")
    (sweep,) = glob.glob(os.path.join(log_dir, "models", "_sweeps", "*.json"))
    with open(sweep, encoding="utf-8") as f:
        best = json.load(f)["best"]
    port = free_port()
    served = subprocess.Popen(
        [sys.executable, "-m", "gateway", "models", "serve", best, "--port", str(port), "--log-dir", log_dir],
        cwd=root,  # the sweep's bases are named relative to it
    )
    fake = FakeUpstream().start()
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if served.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("models serve did not answer")
            time.sleep(1)
        upstreams = {
            "base": {"base_url": fake.base_url, "model": "extract-base"},
            "tiny": {"base_url": f"http://127.0.0.1:{port}/v1", "model": best},
        }
        for name, (p_in, p_out) in PRICES.items():
            upstreams[name] |= {"price_in": p_in, "price_out": p_out}
        config = {
            "upstreams": upstreams,
            "routes": {"extract": {"baseline": "base", "candidate": "tiny", "mode": "shadow"}},
        }
        with open(os.path.join(root, "shadowtune.yaml"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)  # JSON is YAML
        settings = Settings.model_validate(
            {**config, "server": {"auth": "open"}, "store": {"log_dir": log_dir, "flush_interval": 0.2}}
        )
        gw = GatewayServer(settings).start()
        rng = random.Random(7)
        try:
            with httpx.Client(base_url=gw.url, timeout=120) as http:
                send(http, rng, 60, thumbs=False)
                time.sleep(3)  # the shadow calls finish
                r = http.patch(
                    "/admin/routes/extract", json={"mode": "canary", "share": 50, "reason": "worth-it demo"}
                )
                r.raise_for_status()
                send(http, rng, 80, thumbs=True)
                time.sleep(3)
        finally:
            gw.stop()
    finally:
        fake.stop()
        served.terminate()
        served.wait(30)
    print(
        f"shadowtune report worth-it --route extract --since 1h --config {root}/shadowtune.yaml --log-dir {log_dir}"
    )


def send(http: httpx.Client, rng: random.Random, n: int, *, thumbs: bool) -> None:
    for i in range(n):
        messages, _ = extraction_example(rng)
        body = {
            "model": "extract",
            "messages": messages,
            "temperature": 0,
            "max_tokens": 60,
            "user": f"u{i % 20}",
        }
        headers: dict[str, str] = {}
        if i % 2:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
            with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                r.raise_for_status()
                r.read()
        else:
            r = http.post("/v1/chat/completions", json=body, headers=headers)
            r.raise_for_status()
        if thumbs and i % 3 == 0:
            call_id = r.headers["x-request-id"]
            value = "up" if rng.random() < 0.7 else "down"
            http.post(
                "/v1/feedback", json={"call_id": call_id, "kind": "thumbs", "value": value}
            ).raise_for_status()


if __name__ == "__main__":
    main(os.path.abspath(sys.argv[1]))
