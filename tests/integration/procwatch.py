"""Watching the proxy process from the outside: its fds (by count and by kind) and CPU time.

Leak checks compare against `baseline_fds()`, taken once the proxy's lazily
created resources exist, and poll with a deadline rather than sleeping.
"""

from __future__ import annotations

import os
import time

import psutil
from conftest import wait_until
from integration.rawclient import request, send_raw
from integration.recording import RecordingUpstream

#: relay.py keeps up to this many empty splice pipes (two fds each) for the next large body.
PIPE_POOL_FDS = 2 * 16

BIG = 4 * 1024 * 1024
BIG_CLOSE_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % BIG + b"w" * BIG
)


def baseline_fds(proxy) -> int:
    """The proxy's fd count after one large exchange.

    By then the lazily created resources exist: the hub's, and the one splice pipe
    that relay.py keeps pooled for the next large body.
    """
    with RecordingUpstream(response=BIG_CLOSE_RESPONSE) as warm:
        assert send_raw(proxy.port, request(warm.port)).status == 200
        warm.wait_all_closed()
    return settled_fds(proxy.pid)


def settled_fds(pid: int, timeout: float = 5.0) -> int:
    """The process's open fd count once it stops changing (two equal samples 0.1 s apart)."""
    process = psutil.Process(pid)
    deadline = time.monotonic() + timeout
    last = process.num_fds()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = process.num_fds()
        if now == last:
            return now
        last = now
    return last


def wait_fds(pid: int, at_most: int, timeout: float = 10.0) -> int:
    """Poll until the process has at most `at_most` fds open; returns the count then."""
    process = psutil.Process(pid)
    wait_until(lambda: process.num_fds() <= at_most, timeout, interval=0.05)
    return process.num_fds()


def wait_fds_at_least(pid: int, count: int, timeout: float = 10.0) -> int:
    """Poll until the process has at least `count` fds open; returns the count then."""
    process = psutil.Process(pid)
    wait_until(lambda: process.num_fds() >= count, timeout, interval=0.05)
    return process.num_fds()


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def fd_census(pid: int) -> dict:
    """The process's open fds by kind ("socket", "pipe", "anon_inode", "file")."""
    kinds: dict = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed while we looked
        kind = target.split(":", 1)[0] if ":" in target and not target.startswith("/") else "file"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def wait_sockets(pid: int, at_most: int, timeout: float = 10.0) -> dict:
    """Poll until the process holds at most `at_most` sockets; returns the census then."""
    wait_until(lambda: fd_census(pid).get("socket", 0) <= at_most, timeout, interval=0.05)
    return fd_census(pid)
