"""The one atomic-write helper and the one file lock (`gateway.store.fileio`), across real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from gateway.store.fileio import atomic_file, locked, try_lock, try_locked, write_atomic, write_json_atomic


def _leftovers(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if ".tmp-" in n)


def test_write_json_atomic_replaces_the_file_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "deep" / "state.json"
    write_json_atomic(path, {"v": 1})
    write_json_atomic(path, {"v": 2, "when": object.__name__}, sort_keys=True, indent=None)
    assert json.loads(path.read_text()) == {"v": 2, "when": "object"}
    assert _leftovers(path.parent) == []


def test_an_error_mid_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    path = tmp_path / "summary.json"
    write_atomic(path, "old")
    with pytest.raises(RuntimeError), atomic_file(path) as f:
        f.write(b"half of the new")
        raise RuntimeError("disk said no")
    assert path.read_text() == "old"
    assert _leftovers(tmp_path) == []
    with pytest.raises(TypeError):  # cannot be serialised: nothing is written at all
        write_json_atomic(path, {"x": object()}, default=None)
    assert path.read_text() == "old"


def test_mode_is_exact_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        write_atomic(tmp_path / "keys.json", "{}", mode=0o600)
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "keys.json").st_mode & 0o777) == 0o600


WRITER = """
import sys
from gateway.store.fileio import write_json_atomic
n = 0
while True:
    n += 1
    write_json_atomic(sys.argv[1], {"n": n, "pad": "x" * 200_000}, sync=n % 2 == 0)
"""


def test_a_writer_killed_mid_write_leaves_a_whole_file(tmp_path):
    path = tmp_path / "report.json"
    write_json_atomic(path, {"n": 0, "pad": ""})
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
        time.sleep(0.4)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        doc = json.loads(path.read_text())  # the old or a new document, never half of one
        assert isinstance(doc["n"], int)
    # the temporary file of the write that was killed may stay (nobody reads it); never under the name
    assert all(n.startswith("report.json.tmp-") for n in _leftovers(tmp_path))


HOLDER = """
import sys, time
from gateway.store.fileio import try_lock
fd = try_lock(sys.argv[1])
print("held" if fd is not None else "busy", flush=True)
time.sleep(60)
"""


def test_try_lock_is_exclusive_across_processes_and_a_killed_holder_releases_it(tmp_path):
    lock = tmp_path / "writer.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert try_lock(lock) is None
        with try_locked(lock) as mine:
            assert not mine
    finally:
        holder.kill()
        holder.wait()
    fd = try_lock(lock)  # kill -9 released it
    assert fd is not None
    os.close(fd)
    with try_locked(tmp_path / "new" / "job.lock") as mine:
        assert mine


COUNTER = """
import json, sys
from gateway.store.fileio import locked, write_json_atomic
path, lock = sys.argv[1], sys.argv[2]
for _ in range(int(sys.argv[3])):
    with locked(lock):
        with open(path) as f:
            n = json.load(f)["n"]
        write_json_atomic(path, {"n": n + 1}, sync=False)
"""


def test_locked_serialises_read_modify_write_across_processes(tmp_path):
    path, lock = tmp_path / "counter.json", tmp_path / "locks" / "counter.lock"
    write_json_atomic(path, {"n": 0})
    procs = [subprocess.Popen([sys.executable, "-c", COUNTER, str(path), str(lock), "40"]) for _ in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    assert json.loads(path.read_text()) == {"n": 160}
    with locked(lock):  # free again
        pass
