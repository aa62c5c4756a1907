"""The log agent inside the serving process: ``create_app(settings)`` without ``agent_socket``.

For tests and for embedding the gateway in another ASGI server: the same WAL writer,
tailer, converter, telemetry and jobs as ``shadowtune serve``, in threads of one process
(so the GIL is shared with the event loop: ``serve`` keeps them in a separate process).
"""

from __future__ import annotations

from typing import Any

from gateway.agent.core import LogAgent, call_resolver


def embed_agent(ctx: Any, *, span_exporter: Any = None, metric_readers: Any = ()) -> LogAgent:
    from gateway import telemetry

    agent = LogAgent(ctx.settings, own=ctx.writer)
    ctx.agent = agent
    ctx.telemetry = telemetry.Telemetry(
        ctx.settings.telemetry, ctx, span_exporter=span_exporter, metric_readers=metric_readers
    )
    ctx.telemetry.resolve_calls = call_resolver(ctx.settings, agent.wal_dir)
    agent.tailer.listeners.append(ctx.telemetry.on_records)
    ctx.writer.flush_hooks.append(agent.convert)
    return agent
