"""The log agent process (``python -m gateway.agent``), started and restarted by the supervisor.

Serves `gateway.agent.app` on the unix socket named by ``_SHADOWTUNE_AGENT_SOCKET``. It stops
on SIGTERM/SIGINT, and when the supervisor dies (the pipe ``_SHADOWTUNE_PARENT_FD`` reaches
end of file); on the way out it waits (bounded) for the workers to close their segments
and converts what they left.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import sys
from typing import Any

ENV_SETTINGS = "_SHADOWTUNE_SETTINGS"
ENV_SOCKET = "_SHADOWTUNE_AGENT_SOCKET"
ENV_PARENT_FD = "_SHADOWTUNE_PARENT_FD"
ENV_LOG_LEVEL = "_SHADOWTUNE_LOG_LEVEL"


def watch_parent(server: Any, fd_env: str = ENV_PARENT_FD, *, hard_exit_after: float | None = None) -> None:
    """Stop ``server`` (a uvicorn.Server) when the supervisor's pipe closes (it died)."""
    import threading
    import time

    raw = os.environ.get(fd_env)
    if not raw:
        return
    fd = int(raw)

    def watch() -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        logging.getLogger("shadowtune").warning("the supervisor is gone: stopping (pid %d)", os.getpid())
        server.should_exit = True
        if hard_exit_after is not None:
            time.sleep(hard_exit_after)
            os._exit(1)

    threading.Thread(target=watch, name="shadowtune-parent-watch", daemon=True).start()


class _NoPandas:
    """A meta path finder that refuses ``pandas`` (see `without_pandas`)."""

    @staticmethod
    def find_spec(name: str, *_: object) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"{name} is kept out of the log agent", name=name)


def without_pandas() -> None:
    """Keep pandas out of this process: pyarrow imports it on its first ``pa.array`` or
    ``pa.table`` call when it is installed (to check for DataFrames), about 46 MiB of RSS and a
    second of CPU that the agent never uses (nothing in `gateway` uses pandas). Call before
    pyarrow is first used; a no-op when pandas is already imported."""
    if "pandas" not in sys.modules and not any(isinstance(f, _NoPandas) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoPandas())


def main() -> None:
    without_pandas()
    import uvicorn

    from gateway.agent.app import ClientFromHeader, create_agent_app
    from gateway.config import Settings

    settings = Settings.model_validate(json.loads(os.environ[ENV_SETTINGS]))
    if settings.server.agent_nice:
        os.nice(settings.server.agent_nice)  # the request workers first (docs/benchmarks.md)
    path = os.environ[ENV_SOCKET]
    level = os.environ.get(ENV_LOG_LEVEL, "info")
    if os.path.exists(path):
        os.unlink(path)  # left by an agent that was killed
    api = create_agent_app(settings)
    app = ClientFromHeader(api)
    config = uvicorn.Config(
        app,
        uds=path,
        loop="uvloop",
        http="httptools",
        access_log=False,
        server_header=False,
        log_level=level,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    watch_parent(server, hard_exit_after=40)
    server.run()
    api.state.ctx.agent.stop()  # when uvicorn stopped before the lifespan ran its shutdown (no-op otherwise)
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()


def release_freed_memory() -> None:
    """Give the heap freed by a conversion round (or by a conversion process's segment) back to the
    OS (glibc keeps it otherwise: the RSS would stay at the high-water mark of the largest batch)."""
    global _TRIM
    if _TRIM is None:
        try:
            _TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM: Any = None
