"""``shadowtune serve``: one supervisor, N request workers and one log agent per host.

The supervisor binds the port once and passes the listening socket to every worker (they
accept on it side by side), starts the agent on a private unix socket, and then only
watches: a worker or the agent that dies is started again (the agent with a back-off;
workers keep appending to the WAL meanwhile, and the new agent adopts what is there). It
holds the write end of a pipe whose read end every child watches: when the supervisor dies,
even by ``kill -9``, the pipe closes and the children stop, so no orphan keeps the port.

On SIGTERM/SIGINT it stops the workers first (they finish their requests and close their
WAL segments), then the agent, which converts what is left before it exits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from gateway.agent.process import ENV_LOG_LEVEL, ENV_PARENT_FD, ENV_SETTINGS, ENV_SOCKET
from gateway.agent.worker import ENV_LISTEN_FD

log = logging.getLogger("shadowtune.serve")

POLL_S = 0.2
AGENT_READY_S = 60.0
WORKER_STOP_S = 15.0
AGENT_STOP_S = 30.0


class Child:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], fds: tuple[int, ...]) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.fds = fds
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.next_start = 0.0

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, pass_fds=self.fds)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %d) did not stop in %.0f s: killing it", self.name, self.proc.pid, timeout)
            self.proc.kill()
            self.proc.wait(10)


class Supervisor:
    def __init__(self, settings_json: str, *, log_level: str = "info") -> None:
        srv = json.loads(settings_json).get("server") or {}
        self.host, self.port = srv.get("host", "127.0.0.1"), int(srv.get("port", 8000))
        self.sock = socket.create_server((self.host, self.port), backlog=2048, reuse_port=False)
        self.sock.set_inheritable(True)
        self.rundir = tempfile.mkdtemp(prefix="shadowtune-")
        os.chmod(self.rundir, 0o700)
        self.agent_socket = os.path.join(self.rundir, "agent.sock")
        self._pipe_r, self._pipe_w = os.pipe()  # the write end stays here: children see EOF when we die
        env = {
            **os.environ,
            ENV_SETTINGS: settings_json,
            ENV_SOCKET: self.agent_socket,
            ENV_PARENT_FD: str(self._pipe_r),
            ENV_LISTEN_FD: str(self.sock.fileno()),
            ENV_LOG_LEVEL: log_level,
        }
        py = sys.executable
        # the agent's RSS stays near its working set (docs/benchmarks.md): few malloc arenas (its threads
        # would each keep the peak of their batches) and Arrow on the system allocator, which
        # `process.release_freed_memory` trims as each round converts (the user's own settings win)
        agent_env = {"MALLOC_ARENA_MAX": "2", "ARROW_DEFAULT_MEMORY_POOL": "system", **env}
        self.agent = Child("log agent", [py, "-m", "gateway.agent"], agent_env, (self._pipe_r,))
        self.workers = [
            Child(f"worker {i}", [py, "-m", "gateway.agent.worker"], env, (self._pipe_r, self.sock.fileno()))
            for i in range(max(1, int(srv.get("workers", 1))))
        ]
        self._stopping = False

    def _on_signal(self, signum: int, _: Any) -> None:
        self._stopping = True

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        try:
            self.agent.start()
            self._wait_for_agent(AGENT_READY_S)
            for w in self.workers:
                w.start()
            while not self._stopping:
                time.sleep(POLL_S)
                self._check(self.agent, backoff=True)
                for w in self.workers:
                    self._check(w, backoff=False)
            return 0
        finally:
            self.stop()

    def _wait_for_agent(self, timeout: float) -> None:
        """Start serving once the agent answers (it converts what earlier runs left first), or after
        ``timeout``: the workers serve without it (the WAL keeps everything) while it is restarted."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.agent.alive and not self._stopping:
            with socket.socket(socket.AF_UNIX) as s, contextlib.suppress(OSError):
                s.connect(self.agent_socket)
                return
            time.sleep(0.05)
        log.warning("the log agent is not answering yet; starting the workers anyway")

    def _check(self, child: Child, *, backoff: bool) -> None:
        if child.alive or self._stopping:
            return
        now = time.monotonic()
        if child.next_start == 0.0:
            code = child.proc.returncode if child.proc is not None else None
            delay = min(10.0, 0.5 * 2 ** min(child.restarts, 5)) if backoff else 0.5
            log.error("%s exited (code %s); starting it again in %.1f s", child.name, code, delay)
            child.next_start = now + delay
            return
        if now >= child.next_start:
            child.restarts += 1
            child.next_start = 0.0
            child.start()

    def stop(self) -> None:
        self._stopping = True
        for w in self.workers:
            w.terminate()
        for w in self.workers:
            w.wait(WORKER_STOP_S)
        self.sock.close()
        os.close(self._pipe_w)  # the agent stops on this too (even while it is still starting)
        if not self.agent.alive:  # it died: one more, which converts what is left and exits
            self.agent.start()
        self.agent.terminate()
        self.agent.wait(AGENT_STOP_S)
        os.close(self._pipe_r)
        shutil.rmtree(self.rundir, ignore_errors=True)


def serve(settings_json: str, *, log_level: str = "info") -> int:
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s: %(message)s")
    try:
        sup = Supervisor(settings_json, log_level=log_level)
    except OSError as exc:
        srv = json.loads(settings_json).get("server") or {}
        log.error("cannot listen on %s:%s: %s", srv.get("host"), srv.get("port"), exc)
        return 1
    return sup.run()


def exec_supervisor(settings_json: str, *, log_level: str = "info") -> None:
    """Replace this process (the ``serve`` command, which imported the CLI) with a lean supervisor:
    same pid, so signals and process groups aimed at ``serve`` reach it."""
    os.environ[ENV_SETTINGS] = settings_json
    os.environ[ENV_LOG_LEVEL] = log_level
    os.execv(sys.executable, [sys.executable, "-m", "gateway.agent.supervisor"])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(serve(os.environ[ENV_SETTINGS], log_level=os.environ.get(ENV_LOG_LEVEL, "info")))
