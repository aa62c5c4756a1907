"""The GPU path, end to end: LoRA on CUDA, vLLM serving the adapter, Shadowtune shadowing to it.

Nothing is downloaded. The script builds a Qwen2-architecture model of realistic width with
random weights (``--params 0.5`` billion by default; the tokenizer is the synthetic extraction
task's own, `tests.support.tiny_model`), logs synthetic traffic, builds a dataset and trains a
LoRA adapter with `trainer.lora.train_lora` on CUDA; then starts vLLM with
``--enable-lora --lora-modules <version>=<adapter>`` serving the base and the adapter, starts
``shadowtune serve`` with the base as the route's baseline and the adapter as its shadow
candidate, sends ``--requests`` chat calls through the gateway and reads the log: every call
served, every shadow call answered by the adapter. The figures are printed as one JSON object
(and written to ``--out``): parameters, training time and steps/s, vLLM start time, latency of
served calls, shadow calls logged with status 200.

``--cpu`` runs the same steps at toy size on the CPU with the dev server (`trainer.serve`) in
place of vLLM, to check the script itself where there is no GPU::

    python bench/gpu_check.py --cpu --out /tmp/gpu_check.json        # here, no GPU
    bash bench/gpu_check.sh                                         # on the GPU machine
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def build_model(path: str, billions: float, cpu: bool) -> dict[str, Any]:
    """A random Qwen2 model of about ``billions`` parameters (toy size with ``cpu``) and its tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tests.support.tiny_model import build_tiny_tokenizer

    os.makedirs(path, exist_ok=True)
    tok = build_tiny_tokenizer(path)
    if cpu:
        width, layers, inter, heads, kv = 64, 2, 256, 4, 2
    else:  # Qwen2.5-0.5B-like proportions; layers scaled to the asked size
        width, inter, heads, kv = 1024, 4096, 16, 4
        per_layer = 2 * width * width + 2 * width * (width // heads * kv) + 3 * width * inter
        layers = max(2, round((billions * 1e9 - 32768 * width) / per_layer))
    config = Qwen2Config(
        vocab_size=32768 if not cpu else len(tok),
        hidden_size=width,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model: Any = Qwen2ForCausalLM(config)
    model = model.to(dtype=torch.bfloat16 if not cpu else torch.float32)
    model.save_pretrained(path)
    n = sum(p.numel() for p in model.parameters())
    return {"params": n, "layers": layers, "hidden": width, "vocab": config.vocab_size}


def make_dataset(log_dir: str, n: int) -> Any:
    from gateway.store import LogWriter
    from tests.support.fake_upstream import extract_order
    from tests.support.tiny_model import call_record, extraction_example
    from trainer.dataset import build_dataset

    rng = random.Random(0)
    with LogWriter(log_dir) as w:
        for _ in range(n):
            messages, _ = extraction_example(rng)
            w.append("calls", call_record(messages, extract_order(messages[-1]["content"]), route="orders"))
    return build_dataset(log_dir, "orders-gpu", route="orders", warn=False)


def wait_http(url: str, proc: subprocess.Popen[Any], timeout: float) -> float:
    import httpx

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:g}s")


def start_server(
    model_dir: str, version: str, adapter: str, log_dir: str, cpu: bool, out_dir: str
) -> tuple[int, str, str, str, float]:
    """vLLM with the adapter (GPU) or the dev server (``--cpu``); returns pid, url, base name, adapter name, start s."""
    log = os.path.join(out_dir, "server.log")
    if cpu:
        from trainer.serve import start_dev_server

        dev = start_dev_server(log_dir, version, timeout=900, output=log)
        return dev.pid, dev.url, version, version, dev.start_s
    from tests.support.servers import free_port

    port = free_port()
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
        "--served-model-name", "base", "--enable-lora", "--lora-modules", f"{version}={adapter}",
        "--max-lora-rank", "64", "--max-model-len", "512", "--gpu-memory-utilization", "0.5",
        "--port", str(port), "--dtype", "bfloat16",
    ]  # fmt: skip
    with open(log, "w") as sink:  # the server keeps its own copy of the file
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    took = wait_http(f"http://127.0.0.1:{port}/health", proc, 900)
    return proc.pid, f"http://127.0.0.1:{port}/v1", "base", version, took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--cpu", action="store_true", help="Toy size on the CPU, the dev server in place of vLLM."
    )
    ap.add_argument("--params", type=float, default=0.5, help="Model size in billions of parameters.")
    ap.add_argument("--examples", type=int, default=400)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--out", default=None, help="Write the figures here as JSON.")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="shadowtune-gpu-check-")
    figures: dict[str, Any] = {"mode": "cpu" if args.cpu else "cuda", "work": work}
    pids: list[int] = []
    try:
        import torch

        if not args.cpu and not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --cpu to check the script itself")
        if not args.cpu:
            figures["gpu"] = torch.cuda.get_device_name(0)
        t0 = time.monotonic()
        model_dir = os.path.join(work, "model")
        figures["model"] = build_model(model_dir, args.params, args.cpu)
        figures["build_model_s"] = round(time.monotonic() - t0, 1)
        log_dir = os.path.join(work, "log")
        dv = make_dataset(log_dir, args.examples)
        from trainer.lora import train_lora

        hp = {
            "epochs": 1 if not args.cpu else 2,
            "batch_size": 8,
            "lora_r": 16,
            "lora_alpha": 32,
            "learning_rate": 1e-3,
        }
        t0 = time.monotonic()
        mv = train_lora(log_dir, model_dir, dv, hyperparameters=hp, device="cpu" if args.cpu else "cuda",
                        progress=False, exact_match_limit=0)  # fmt: skip
        train_s = time.monotonic() - t0
        figures["train"] = {
            "version": mv.version, "device": mv.metrics.get("device"), "steps": mv.metrics.get("steps"),
            "seconds": round(train_s, 1), "steps_per_s": round((mv.metrics.get("steps") or 0) / mv.metrics["train_runtime_s"], 2),
            "loss": [mv.metrics.get("first_logged_loss"), mv.metrics.get("last_logged_loss")],
        }  # fmt: skip
        if not args.cpu:
            figures["train"]["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            torch.cuda.empty_cache()
        pid, url, base_name, lora_name, start_s = start_server(
            model_dir, mv.version, str(mv.adapter_path), log_dir, args.cpu, work
        )
        pids.append(pid)
        figures["server"] = {"kind": "dev" if args.cpu else "vllm", "start_s": round(start_s, 1)}
        figures["gateway"] = shadow_through_gateway(
            work, log_dir, url, base_name, lora_name, args.requests, pids
        )
        figures["ok"] = figures["gateway"]["shadow_ok"] == figures["gateway"]["served"] == args.requests
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0 if figures.get("ok") else 1


def shadow_through_gateway(
    work: str, log_dir: str, url: str, base_name: str, lora_name: str, n: int, pids: list[int]
) -> dict[str, Any]:
    """``shadowtune serve`` with the base as baseline and the adapter in shadow; ``n`` calls; the log read back."""
    import httpx
    import yaml

    from gateway.store import LogStore
    from tests.support.servers import free_port
    from tests.support.tiny_model import extraction_example

    port = free_port()
    config = {
        "server": {"port": port, "auth": "open"},
        "store": {"log_dir": log_dir, "flush_interval": 0.2},
        "upstreams": {
            "base": {"base_url": url, "model": base_name},
            "adapter": {"base_url": url, "model": lora_name},
        },
        "routes": {"orders": {"baseline": "base", "candidate": "adapter", "mode": "shadow"}},
    }
    path = os.path.join(work, "shadowtune.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    log = open(os.path.join(work, "gateway.log"), "w")  # noqa: SIM115 - the gateway outlives this block
    gw = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", path], stdout=log,
                          stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    pids.append(gw.pid)
    wait_http(f"http://127.0.0.1:{port}/healthz", gw, 60)
    rng = random.Random(1)
    latencies = []
    import datetime as dt

    since = dt.datetime.now(dt.UTC)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}/v1", timeout=120) as http:
        for _ in range(n):
            messages, _ = extraction_example(rng)
            t0 = time.monotonic()
            r = http.post(
                "/chat/completions",
                json={"model": "orders", "messages": messages, "max_tokens": 48, "temperature": 0},
            )
            r.raise_for_status()
            latencies.append(time.monotonic() - t0)
    deadline = time.monotonic() + 120
    while True:
        time.sleep(1)
        with LogStore.open(log_dir) as store:
            rows = store.sql(
                "SELECT variant, served, status, upstream FROM calls WHERE route = 'orders' AND ts >= $since",
                {"since": since},
            )
        shadow = [r for r in rows if r["variant"] == "candidate" and not r["served"]]
        if len(shadow) >= n or time.monotonic() > deadline:
            break
    latencies.sort()
    return {
        "served": sum(1 for r in rows if r["served"] and r["status"] == 200),
        "shadow_logged": len(shadow),
        "shadow_ok": sum(1 for r in shadow if r["status"] == 200 and r["upstream"] == "adapter"),
        "latency_p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
        "latency_p95_ms": round(1000 * latencies[int(len(latencies) * 0.95) - 1], 1),
    }


if __name__ == "__main__":
    raise SystemExit(main())
