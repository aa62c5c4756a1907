"""The whole chain in one test: log -> dataset -> train -> serve -> deploy as shadow -> shadow rows.

Traffic goes through the real gateway to the fake provider, whose ``echo-base`` model answers
``"echo-base: <last user message>"``: that is the baseline a cheaper model must imitate. The
tiny model is fine-tuned on the logged answers, served by the dev server, made the route's
shadow candidate through the admin API, and its answers to new traffic land in the log next to
the baseline's, while users keep getting the baseline's.
"""

from __future__ import annotations

import random
import time

import openai
import pytest

from gateway.store import LogStore
from tests.support.tiny_model import LORA_HP, ThreadServer, extraction_example, shared_tiny_model
from trainer.dataset import build_dataset
from trainer.deploy import deploy_version
from trainer.lora import train_lora
from trainer.serve import ChatModel, create_app

pytestmark = pytest.mark.slow

HP = LORA_HP


def test_logged_traffic_becomes_a_shadow_candidate(log_dir, make_settings, start_gateway):
    gw = start_gateway(
        make_settings(upstreams={"base": {"model": "echo-base"}}, routes={"orders": {"baseline": "base"}})
    )
    client = openai.OpenAI(base_url=gw.base_url, api_key="unused")
    rng = random.Random(21)
    for _ in range(500):
        messages, _ = extraction_example(rng)
        client.chat.completions.create(model="orders", messages=messages)
    gw.flush()

    dv = build_dataset(log_dir, "orders", route="orders")
    assert dv.splits["train"] > 300 and dv.examples()[0].answer.startswith("echo-base: Order from ")
    mv = train_lora(log_dir, shared_tiny_model(), dv, hyperparameters=HP, progress=False, exact_match_limit=0)
    assert mv.metrics["eval_loss_after"] < 0.5 * mv.metrics["eval_loss_before"]

    served = ThreadServer(create_app(ChatModel.from_version(mv)))
    try:
        deployment = deploy_version(log_dir, mv.version, "orders", url=gw.url, serve_url=served.base_url)
        assert deployment["route_state"]["candidate"] == mv.version

        fresh = [extraction_example(rng)[0] for _ in range(20)]
        answers = [
            client.chat.completions.create(model="orders", messages=m, max_tokens=60, temperature=0)
            .choices[0]
            .message.content
            for m in fresh
        ]
        assert answers == [f"echo-base: {m[-1]['content']}" for m in fresh]  # users still get the baseline

        deadline = time.monotonic() + 120
        while True:
            gw.flush()
            with LogStore.open(log_dir) as store:
                shadow = store.sql(
                    "SELECT c.output_text AS candidate, b.output_text AS baseline, c.status, c.upstream "
                    "FROM calls c JOIN calls b ON c.parent_call_id = b.call_id "
                    "WHERE c.variant = 'candidate' AND NOT c.served AND c.route = 'orders'"
                )
            if len(shadow) == 20 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        served.stop()
    assert len(shadow) == 20
    assert {(r["status"], r["upstream"]) for r in shadow} == {(200, mv.version)}
    agree = sum(r["candidate"] == r["baseline"] for r in shadow) / len(shadow)
    assert agree >= 0.2, (
        f"the candidate matched the baseline on {agree:.0%} of new inputs: {shadow[:2]} {mv.metrics}"
    )
