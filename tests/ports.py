"""Loopback ports for the servers the tests start."""

from __future__ import annotations

import os
import socket

_given: set[int] = set()


def free_port() -> int:
    """A loopback port free now, chosen by the kernel as before, and never one that another
    pytest-xdist worker of this run can be handed: each worker takes only the ports whose half
    (Linux hands `bind` odd ports, so the last bit says nothing) leaves its own index as the
    remainder by the number of workers. Nor one this process handed out before."""
    count = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1), 1)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = (int(worker) if worker.isdigit() else 0) % count
    for _ in range(100 * count):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if (port >> 1) % count == index and port not in _given:
            _given.add(port)
            return port
    raise RuntimeError(f"no free loopback port for pytest-xdist worker {index} of {count}")
