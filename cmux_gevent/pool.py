"""Upstream keep-alive connections, pooled per (host, port).

A pooled connection is only handed out if it is younger than POOL_IDLE_SECONDS,
and, once idle for PEEK_AFTER, only if it has nothing to read: an upstream that
closed it (EOF) or wrote to it unprompted is discarded here rather than
discovered by a request. Each keeps its response parser (a MessageReader), so a
request on a reused connection creates none unless the last response left the
parser mid-message.
"""

import errno
import time

import gevent
from gevent import socket

from .body import MessageReader, peek
from .config import show_address
from .deadlines import SEND_SECONDS
from .errors import UpstreamError
from .parser import Limits, MessageParser, response_parser

POOL_IDLE_SECONDS = 4.0  # Node dev servers drop idle sockets at 5 s
#: A connection released this recently is handed out without a liveness peek: servers
#: close idle keep-alive connections after seconds, and a request that still meets a
#: dead one is retried once on a fresh connection (bodiless requests) or gets a 502.
PEEK_AFTER = 1.0
#: cmux-proxy keeps 8; under load (many tabs, a benchmark's 64 connections) 8 makes
#: the pool churn connect/close on every burst, so we keep more. Idle sockets are cheap.
POOL_MAX_IDLE_PER_HOST = 128


def _open(host: str, port: int, timeout: float):
    """Connect without a resolver round trip when `host` is an IP literal (the usual case)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        return sock
    return socket.create_connection((host, port), timeout=timeout)


def connect(host: str, port: int, timeout: float):
    """A new TCP connection to the upstream, or an UpstreamError naming it."""
    try:
        sock = _open(host, port, timeout)
    except socket.timeout:
        raise UpstreamError(
            f"upstream request error: connect to {show_address((host, port))} timed out", status=504
        ) from None
    except OSError as exc:
        reason = errno.errorcode.get(exc.errno, "") if exc.errno else ""
        detail = exc.strerror or str(exc)
        raise UpstreamError(
            f"upstream request error: connect to {show_address((host, port))} failed: {detail}"
            + (f" ({reason})" if reason else "")
        ) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(SEND_SECONDS)  # reads have their own deadlines
    return sock


class UpstreamPool:
    """Idle upstream connections, newest first, with expiry and a liveness check."""

    def __init__(self, connect_timeout: float, limits: Limits):
        self.connect_timeout = connect_timeout
        self.limits = limits
        self._idle = {}
        self._sweeper = None

    def open(self, host: str, port: int) -> MessageReader:
        """A new connection to host:port with its response parser (UpstreamError if none)."""
        sock = connect(host, port, self.connect_timeout)
        return MessageReader(sock, self._parser(host, port))

    def _parser(self, host: str, port: int) -> MessageParser:
        return response_parser(self.limits, show_address((host, port)))  # as its 502s name it

    def acquire(self, host: str, port: int):
        """(upstream, reused): a live pooled connection if there is one, else a new one."""
        idle = self._idle.get((host, port))
        now = time.monotonic()
        while idle:
            upstream, since = idle.pop()
            idle_for = now - since
            if idle_for < PEEK_AFTER or (
                idle_for < POOL_IDLE_SECONDS and peek(upstream.sock) is None
            ):
                return upstream, True
            upstream.sock.close()
        return self.open(host, port), False

    def release(self, host: str, port: int, upstream: MessageReader) -> None:
        """Keep `upstream` for the next request to host:port (it must be between messages)."""
        idle = self._idle.setdefault((host, port), [])
        if len(idle) >= POOL_MAX_IDLE_PER_HOST:
            upstream.sock.close()
            return
        upstream.received = 0
        if not upstream.parser.between_messages:  # a HEAD answer, or a body copied past it
            upstream.parser = self._parser(host, port)
        idle.append((upstream, time.monotonic()))
        if self._sweeper is None:
            self._sweeper = gevent.spawn_later(POOL_IDLE_SECONDS, self._sweep)

    def _sweep(self) -> None:
        """Close expired connections so upstreams never see us hold them past their timeout."""
        self._sweeper = None
        deadline = time.monotonic() - POOL_IDLE_SECONDS
        for key, idle in list(self._idle.items()):
            keep = []
            for upstream, since in idle:
                if since > deadline:
                    keep.append((upstream, since))
                else:
                    upstream.sock.close()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        if self._idle:
            self._sweeper = gevent.spawn_later(1.0, self._sweep)

    def close(self) -> None:
        for idle in self._idle.values():
            for upstream, _ in idle:
                upstream.sock.close()
        self._idle.clear()
