"""OpenAI's shapes as the gateway, the trainer and evals share them, importable without the server.

* `gateway.protocol.requests`: typed views of chat, embeddings, Responses and completions
  request bodies that keep every field (the one parse of a body on the request path);
* `gateway.protocol.messages`: `message_text`, the text of a message's ``content``;
* `gateway.protocol.sse`: streamed answers assembled into the object they stand for;
* `gateway.protocol.errors`: the one OpenAI error body, and reading an upstream's;
* `gateway.protocol.record`: `CallRecord`, the one record the request path appends to the log;
* `gateway.protocol.redact`: the redaction patterns of the call log and of datasets.

Nothing here imports FastAPI, pyarrow or DuckDB.
"""
