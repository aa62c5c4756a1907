"""The trainer pipeline's fast eval scores the prompted baseline on the same test split, through a
real gateway in front of the fake provider."""

from __future__ import annotations

from types import SimpleNamespace

from evals.retrain.steps import baseline_score
from gateway.store import LogStore
from trainer.dataset import Example


def example(i: int, question: str, label: str) -> Example:
    return Example(
        example_id=f"e{i}",
        call_id=f"call_{i}",
        split="test",
        messages=[{"role": "system", "content": "Echo."}, {"role": "user", "content": question}],
        tools=None,
        completion={"role": "assistant", "content": label},
        label_source="served",
        input_hash=f"h{i}",
    )


TEST = [
    example(0, "one", "echo-base: one"),
    example(1, "two", "echo-base: two"),
    example(2, "three", "echo-base: three"),
    example(3, "four", "a relabelled answer"),
]


def test_the_baseline_is_scored_on_the_same_split_through_the_route(make_settings, start_gateway, log_dir):
    gw = start_gateway(
        make_settings(
            upstreams={"base": {"model": "echo-base"}, "ft": {"model": "echo-ft"}},
            routes={"orders": {"baseline": "base", "candidate": "ft", "mode": "shadow"}},
        )
    )
    ctx = SimpleNamespace(route="orders", log_dir=log_dir)
    got = baseline_score(ctx, {"gateway_url": gw.url}, TEST)
    assert got == {"model": "orders", "exact_match": 0.75, "field_match": 0.75, "failed": 0}
    gw.flush()
    tags = LogStore.open(log_dir).sql("SELECT tags FROM calls WHERE route = 'orders' AND served")
    assert len(tags) == 4 and all("fast-eval" in r["tags"] for r in tags)


def test_a_baseline_that_cannot_be_isolated_or_reached_is_reported_not_left_out(
    make_settings, start_gateway, log_dir
):
    gw = start_gateway(
        make_settings(
            upstreams={"base": {"model": "echo-base"}, "ft": {"model": "echo-ft"}},
            routes={"orders": {"baseline": "base", "candidate": "ft", "mode": "canary", "share": 50}},
        )
    )
    ctx = SimpleNamespace(route="orders", log_dir=log_dir)
    got = baseline_score(ctx, {"gateway_url": gw.url}, TEST)
    assert got["model"] is None and "canary mode" in got["error"] and "baseline_model" in got["error"]
    down = baseline_score(ctx, {"gateway_url": "http://127.0.0.1:9"}, TEST)
    assert down["model"] is None and "does not answer" in down["error"]
    named = baseline_score(ctx, {"gateway_url": "http://127.0.0.1:9", "baseline_model": "x"}, TEST)
    assert named["exact_match"] == 0.0 and named["failed"] == 4 and "every call" in named["error"]
