"""A request worker process (``python -m gateway.agent.worker``), started by the supervisor.

Serves `gateway.app.create_app` in worker mode (WAL appends only, log pages proxied to the
agent) on the listening socket the supervisor passes as ``_SHADOWTUNE_LISTEN_FD``, and
exits when the supervisor dies (its pipe closes): no orphan holds the port.
"""

from __future__ import annotations

import gc
import json
import os
import socket


def main() -> None:
    import uvicorn

    from gateway.agent.process import ENV_LOG_LEVEL, ENV_SETTINGS, ENV_SOCKET, watch_parent
    from gateway.app import create_app
    from gateway.config import Settings
    from gateway.server import uvicorn_options

    settings = Settings.model_validate(json.loads(os.environ[ENV_SETTINGS]))
    app = create_app(settings, agent_socket=os.environ[ENV_SOCKET])
    config = uvicorn.Config(
        app,
        log_level=os.environ.get(ENV_LOG_LEVEL, "info"),
        **uvicorn_options(settings),  # httptools with header deadlines and limits (gateway.server)
    )
    server = uvicorn.Server(config)
    # what start-up made lives as long as the worker: out of the collector's way, so its full collections
    # (which walk every tracked object) stay short on the request path
    gc.collect()
    gc.freeze()
    watch_parent(server, hard_exit_after=20)
    sock = socket.socket(fileno=int(os.environ[ENV_LISTEN_FD]))
    server.run(sockets=[sock])


ENV_LISTEN_FD = "_SHADOWTUNE_LISTEN_FD"

if __name__ == "__main__":  # pragma: no cover
    main()
