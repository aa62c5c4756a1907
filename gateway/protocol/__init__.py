"""Shapes shared by the gateway, the trainer and evals, importable without the server.

`gateway.protocol.record.CallRecord` is the one record the request path appends to the
call log. Nothing here imports FastAPI, pyarrow or DuckDB.
"""
