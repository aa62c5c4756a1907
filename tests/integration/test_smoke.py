from gateway.store import LogStore


def test_a_chat_call_is_answered_and_logged(gateway, log_dir):
    from openai import OpenAI

    client = OpenAI(base_url=gateway.base_url, api_key="sk-test")
    reply = client.chat.completions.with_raw_response.create(
        model="echo-1", messages=[{"role": "user", "content": "ping"}]
    )
    completion = reply.parse()
    assert completion.choices[0].message.content == "echo-1: ping"
    call_id = reply.headers["x-request-id"]
    assert call_id.startswith("call_")
    assert float(reply.headers["x-shadowtune-overhead-ms"]) >= 0
    gateway.flush()
    rows = LogStore.open(log_dir).sql("SELECT * FROM calls WHERE call_id = ?", [call_id])
    assert len(rows) == 1
    assert rows[0]["output_text"] == "echo-1: ping"
    assert rows[0]["input_tokens"] == 7
