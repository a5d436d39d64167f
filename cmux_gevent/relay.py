"""Byte tunnels for WebSocket upgrades and CONNECT: two directions, half-close honoured.

Each direction is a copy greenlet. EOF on one side becomes shutdown(SHUT_WR) on
the other while the reverse direction keeps flowing; the tunnel ends when both
directions have ended, or at once when either side errors.
"""

import gevent
from gevent import socket

from .body import READ_SIZE


def _pump(src, dst, first: bytes, idle_timeout):
    """Copy src → dst until EOF, starting with `first`; returns (bytes copied, clean end)."""
    copied = 0
    try:
        if first:
            dst.sendall(first)
            copied += len(first)
        src.settimeout(idle_timeout)
        recv, sendall = src.recv, dst.sendall
        while True:
            data = recv(READ_SIZE)
            if not data:
                break
            sendall(data)
            copied += len(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:  # reset, broken pipe, idle timeout: the tunnel is over
        return copied, False
    return copied, True


def tunnel(client, upstream, client_rest: bytes = b"", upstream_rest: bytes = b"",
           idle_timeout=None):
    """Relay bytes both ways; returns (bytes client→upstream, bytes upstream→client).

    `client_rest`/`upstream_rest` are bytes already read past each side's head:
    they go first, so nothing read early is lost. `idle_timeout` (seconds or None)
    closes a direction that stays silent that long.
    """
    up = gevent.spawn(_pump, client, upstream, client_rest, idle_timeout)
    down = gevent.spawn(_pump, upstream, client, upstream_rest, idle_timeout)
    try:
        for finished in gevent.iwait((up, down)):
            if not finished.value[1]:
                break
    finally:
        for greenlet in (up, down):
            if not greenlet.dead:
                greenlet.kill(block=True)
    return _copied(up), _copied(down)


def _copied(greenlet) -> int:
    return greenlet.value[0] if isinstance(greenlet.value, tuple) else 0
