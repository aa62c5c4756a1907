"""100 concurrent calls, each with a unique nonce, come back to their own callers and are
each logged once with their own request and answer."""

from __future__ import annotations

import asyncio
import uuid

import openai

from tests.support.calllog import request, rows


async def test_concurrent_calls_come_back_to_their_own_callers_and_are_each_logged_once(gateway, log_dir):
    nonces = [uuid.uuid4().hex for _ in range(100)]

    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key="sk-test", max_retries=0, timeout=30
    ) as client:

        async def call(i: int, nonce: str) -> tuple[str, str]:
            messages = [{"role": "user", "content": nonce}]
            if i % 2:  # half streamed, half not
                raw = await client.chat.completions.with_raw_response.create(
                    model="echo-c", messages=messages, stream=True
                )
                text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
            else:
                raw = await client.chat.completions.with_raw_response.create(
                    model="echo-c", messages=messages
                )
                text = raw.parse().choices[0].message.content
            return raw.headers["x-request-id"], text

        results = await asyncio.gather(*(call(i, n) for i, n in enumerate(nonces)))

    assert [text for _, text in results] == [f"echo-c: {n}" for n in nonces]
    call_ids = [cid for cid, _ in results]
    assert len(set(call_ids)) == 100

    logged = await asyncio.to_thread(rows, gateway, log_dir)
    assert sorted(r["call_id"] for r in logged) == sorted(call_ids)
    by_id = {r["call_id"]: r for r in logged}
    for (cid, text), nonce in zip(results, nonces, strict=True):
        r = by_id[cid]
        assert request(r)["messages"][0]["content"] == nonce
        assert r["output_text"] == text
        assert r["status"] == 200
