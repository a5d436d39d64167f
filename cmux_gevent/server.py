"""Listeners, the connection registry, capacity, EMFILE back-off and graceful drain.

One StreamServer per listen address, all feeding one `Proxy`: the state every
connection of this process shares (settings, upstream pool, live connections).
"""

import errno
import logging
import os
import signal
import sys

import gevent
from gevent import socket
from gevent.event import Event
from gevent.server import StreamServer

from .accesslog import AccessLog
from .config import Address, Config, show_address
from .connection import ClientConnection
from .pool import UpstreamPool

log = logging.getLogger("cmux_gevent")

#: accept() errors that mean "out of resources for now", not "broken listener".
ACCEPT_PRESSURE = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
ACCEPT_TRANSIENT = (errno.ECONNABORTED, errno.EPROTO, errno.EPERM)
ACCEPT_PAUSE_SECONDS = 0.25


class BindError(OSError):
    """A listen address could not be bound; the CLI exits with status 2."""


class Proxy:
    """What all connections of one process share."""

    def __init__(self, config: Config):
        self.config = config
        self.pool = UpstreamPool(config.connect_timeout, config.limits)
        self.access = AccessLog() if log.isEnabledFor(logging.INFO) else None
        self.connections = set()
        self.draining = False
        self.idle_now = Event()  # set whenever no connection is open
        self.idle_now.set()
        self.listeners = []

    def full(self) -> bool:
        return len(self.connections) >= self.config.max_connections

    def register(self, conn) -> None:
        self.connections.add(conn)
        self.idle_now.clear()

    def release(self, conn) -> None:
        """A connection ended (its greenlet, or the tunnel it became): free its slot."""
        was_full = self.full()
        self.connections.discard(conn)
        if not self.connections:
            self.idle_now.set()
        if was_full and not self.draining:
            for listener in self.listeners:
                listener._start_accepting_if_started()


class Listener(StreamServer):
    """A StreamServer that backs off on fd exhaustion and counts connections against a cap."""

    def __init__(self, sock, proxy: Proxy):
        super().__init__(sock, self._handle)
        self.proxy = proxy
        self._pressure_logged = False

    def full(self) -> bool:  # consulted by gevent before each accept
        return self.proxy.full()

    def do_read(self):
        try:
            return super().do_read()
        except OSError as exc:
            if exc.errno in ACCEPT_TRANSIENT:
                return None
            if exc.errno not in ACCEPT_PRESSURE:
                raise
            self._pause_accepting(exc)
            return None

    def _pause_accepting(self, exc) -> None:
        """Out of fds: stop accepting briefly instead of spinning on accept()."""
        if not self._pressure_logged:
            log.warning(
                "accept failed (%s); pausing accepts for %.2fs", exc.strerror, ACCEPT_PAUSE_SECONDS
            )
            self._pressure_logged = True
        self.stop_accepting()
        self._timer = self.loop.timer(ACCEPT_PAUSE_SECONDS)
        self._timer.start(self._start_accepting_if_started)

    def _handle(self, sock, address) -> None:
        proxy = self.proxy
        conn = ClientConnection(sock, address, proxy)
        proxy.register(conn)
        self._pressure_logged = False
        try:
            conn.serve()
        finally:
            if conn.tunnel is None:  # a tunnel releases its slot when it closes
                proxy.release(conn)


def bind(address: Address, reuse_port: bool = False):
    """A listening gevent socket for `address`; BindError with a readable reason."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        shown = show_address((host, port))
        raise BindError(exc.errno, f"cannot listen on {shown}: {exc.strerror}") from None
    return sock


def bind_all(addresses, reuse_port: bool = False):
    """Bind every address or none: a failure closes what was already bound."""
    sockets = []
    try:
        for address in addresses:
            sockets.append(bind(address, reuse_port))
    except BindError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class ProxyServer:
    """The listeners of one process and its shutdown: drain in-flight, close idle, exit."""

    def __init__(self, config: Config, sockets):
        self.proxy = Proxy(config)
        self.listeners = self.proxy.listeners
        for sock in sockets:
            self.listeners.append(Listener(sock, self.proxy))
        self._stopped = Event()
        self._stopping = False

    @property
    def addresses(self):
        return [listener.address for listener in self.listeners]

    def start(self) -> None:
        for listener in self.listeners:
            listener.start()

    def serve_forever(self) -> None:
        """Serve until SIGTERM/SIGINT; the first drains, a second exits at once."""
        self.start()
        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, self._on_signal, signum)
        self._stopped.wait()

    def _on_signal(self, signum) -> None:
        if self._stopping:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            sys.stderr.flush()
            os._exit(1)  # no drain, no cleanup: that is what a second signal asks for
        log.info("%s: draining", signal.Signals(signum).name)
        gevent.spawn(self.shutdown)

    def shutdown(self) -> None:
        """Stop accepting, close idle keep-alive connections, wait (bounded) for the rest."""
        self._stopping = True
        proxy = self.proxy
        proxy.draining = True
        for listener in self.listeners:
            listener.close()
        for conn in list(proxy.connections):
            if conn.idle:
                conn.close_now()
        if not proxy.idle_now.wait(proxy.config.drain_timeout):
            log.warning("drain timeout: closing %d connection(s)", len(proxy.connections))
            for conn in list(proxy.connections):
                conn.close_now()
            proxy.idle_now.wait(1.0)
        proxy.pool.close()
        if proxy.access is not None:
            proxy.access.flush()
        self._stopped.set()
