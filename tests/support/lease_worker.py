"""A process running one `gateway.jobs.Periodic` job whose run appends ``<pid> <time>`` to a file.

``python -m tests.support.lease_worker LOCATION NAME INTERVAL OUT``: several of these compete
for the same lease, as the gateway's workers and replicas do.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from gateway.jobs import Periodic
from gateway.state import open_backend


def main() -> None:
    location, name, interval, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]

    def job() -> None:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, f"{os.getpid()} {time.time():.6f}\n".encode())
        finally:
            os.close(fd)

    asyncio.run(Periodic(open_backend(location), name, interval, job).run())


if __name__ == "__main__":
    main()
