"""Byte tunnels (WebSocket, CONNECT) and bulk copies, with splice(2) once data flows.

A tunnel costs almost nothing while idle: each direction is just a read watcher
on its source. A message that the destination accepts whole is copied by the
watcher's callback; otherwise (backpressure, bulk) that direction's copy
greenlet moves data blocking-style until the source would block, then re-arms
the watcher and ends. So while data flows the shape is the classic pair of copy
greenlets; while idle there are none. EOF on one side
becomes shutdown(SHUT_WR) on the other and the reverse direction goes on; the
tunnel closes when both directions have ended, or at once on an error.

A direction that has moved SPLICE_AFTER bytes and still fills whole reads
switches from recv/send to splice(2) through a pooled pipe: the bytes never
enter Python. When the source runs dry the direction goes back to its watcher;
a burst that moved a lot resumes straight into splice, a burst that moved little
(the first small message after a large one) puts the direction back on plain
callback copies, so a long-lived socket's small messages spawn nothing.
"""

import _socket
import fcntl
import os
import time

import gevent
from gevent import get_hub

READ_SIZE = 64 * 1024  # small reads until a transfer proves large
SPLICE_AFTER = 256 * 1024  # bytes a transfer moves before it switches to splice
SPLICE_CHUNK = 1 << 20
PIPE_SIZE = 1 << 20
#: One read buffer for the whole process: every read that lands here is consumed (sent
#: on, or parsed and copied) before its greenlet or callback can yield. Tunnels and the
#: head reader in body.py share it.
SCRATCH = bytearray(READ_SIZE)
SCRATCH_VIEW = memoryview(SCRATCH)
_splice = getattr(os, "splice", None)
_SPLICE_FLAGS = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if _splice else 0
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
READ, WRITE = 1, 2


class _Pipes:
    """A free list of empty pipes for splice: creating one per transfer costs two syscalls."""

    def __init__(self, keep: int = 16):
        self.free = []
        self.keep = keep

    def get(self):
        if self.free:
            return self.free.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # capped by /proc/sys/fs/pipe-max-size: the default size still works
        return r, w

    def put(self, pipe, empty: bool) -> None:
        if empty and len(self.free) < self.keep:
            self.free.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])


PIPES = _Pipes()


def send_all(sock, data, writable) -> None:
    """Write all of `data` to a non-blocking socket, parking on `writable` under backpressure."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            get_hub().wait(writable)


def splice_some(src: int, dst: int, pipe, limit: int, writable) -> int:
    """Move up to `limit` bytes src → pipe → dst; 0 at EOF, -1 if src has nothing now.

    `writable` is a write watcher on dst, waited on while dst pushes back.
    """
    try:
        moved = _splice(src, pipe[1], limit, flags=_SPLICE_FLAGS)
    except BlockingIOError:
        return -1
    left = moved
    while left:
        try:
            left -= _splice(pipe[0], dst, left, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            get_hub().wait(writable)
    return moved


def copy_exact(src_sock, dst_sock, remaining):
    """Move `remaining` bytes (None: until EOF) between gevent sockets; returns bytes moved.

    Uses splice, with one pair of readiness watchers for the whole copy. A source
    that ends early stops the copy short, and the caller compares the count with
    what it expected.
    """
    src, dst = src_sock.fileno(), dst_sock.fileno()
    pipe = PIPES.get()
    loop = get_hub().loop
    readable, writable = loop.io(src, READ), loop.io(dst, WRITE)
    moved = 0
    clean = False
    try:
        while remaining is None or moved < remaining:
            left = SPLICE_CHUNK if remaining is None else min(SPLICE_CHUNK, remaining - moved)
            got = splice_some(src, dst, pipe, left, writable)
            if got == 0:
                break
            if got < 0:
                get_hub().wait(readable)
                continue
            moved += got
        clean = True
    finally:
        readable.close()
        writable.close()
        PIPES.put(pipe, empty=clean)
    return moved


can_splice = _splice is not None


class _Direction:
    """One direction of a tunnel: a read watcher while idle, a copy greenlet while busy.

    Small messages (WebSocket frames, HMR pings) are copied straight from the
    watcher's callback when the destination takes them whole; a destination that
    pushes back, a large transfer still filling whole reads, or bytes read early
    start a copy greenlet, which waits blocking-style and hands back to the
    watcher once the source runs dry.
    """

    __slots__ = (
        "tunnel",
        "src",
        "dst",
        "pending",
        "watcher",
        "writable",
        "greenlet",
        "moved",
        "pipe",
        "streaming",
        "done",
    )

    def __init__(self, tunnel, src, dst, pending: bytes):
        self.tunnel = tunnel
        self.src, self.dst = src, dst
        self.pending = pending
        self.watcher = get_hub().loop.io(src.fileno(), READ)
        self.writable = None  # made on first backpressure: most tunnels never need it
        self.greenlet = None
        self.moved = 0
        self.pipe = None
        self.streaming = False  # the last burst spliced a large transfer
        self.done = False

    def start(self) -> None:
        if self.pending:
            self._spawn()
        else:
            self.watcher.start(self._readable)

    def _spawn(self) -> None:
        self.watcher.stop()
        self.greenlet = gevent.spawn(self._burst)

    def _readable(self) -> None:
        """Watcher callback (runs in the hub): copy one read if it goes through whole.

        The read lands in a scratch buffer shared by all tunnels: nothing else runs
        between this recv and send, and only a remainder the destination refused is
        copied out (into `pending`, for the copy greenlet).
        """
        if self.streaming:  # the last burst was a large transfer: resume it with splice
            self._spawn()
            return
        try:
            got = self.src.recv_into(SCRATCH)
            if not got:
                self.watcher.stop()
                self._eof()
                return
            self.moved += got
            if self.tunnel.idle_timeout:
                self.tunnel.last_active = time.monotonic()
            try:
                sent = self.dst.send(SCRATCH_VIEW[:got])
            except BlockingIOError:
                sent = 0
        except BlockingIOError:
            return
        except OSError:
            self.tunnel.close()
            return
        if sent < got:
            self.pending = bytes(SCRATCH_VIEW[sent:got])
            self._spawn()
        elif got == READ_SIZE and self.moved >= SPLICE_AFTER and can_splice:
            self._spawn()  # full reads of a large transfer: splice the rest from a greenlet

    def _burst(self) -> None:
        """Copy until the source would block (back to the watcher) or ends (half-close)."""
        try:
            if self.pending:
                send_all(self.dst, self.pending, self._writable())
                self.pending = b""
            burst = 0
            while True:
                got = self._move()
                if got < 0:
                    self.greenlet = None
                    self.streaming = self.pipe is not None and burst >= READ_SIZE
                    self.watcher.start(self._readable)
                    return
                if got == 0:
                    self.greenlet = None
                    self._eof()
                    return
                burst += got
                self.moved += got
                if self.tunnel.idle_timeout:
                    self.tunnel.last_active = time.monotonic()
        except OSError:
            self.greenlet = None
            self.tunnel.close()

    def _move(self) -> int:
        src, dst = self.src, self.dst
        if self.pipe is None and can_splice and self.moved >= SPLICE_AFTER:
            self.pipe = PIPES.get()
        if self.pipe is not None:
            return splice_some(
                src.fileno(), dst.fileno(), self.pipe, SPLICE_CHUNK, self._writable()
            )
        try:
            data = src.recv(READ_SIZE)
        except BlockingIOError:
            return -1
        if data:
            send_all(dst, data, self._writable())
        return len(data)

    def _writable(self):
        if self.writable is None:
            self.writable = get_hub().loop.io(self.dst.fileno(), WRITE)
        return self.writable

    def _eof(self) -> None:
        self.done = True
        try:
            self.dst.shutdown(_socket.SHUT_WR)
        except OSError:
            pass
        self.tunnel.direction_done()

    def stop(self) -> None:
        self.watcher.close()
        if self.writable is not None:
            self.writable.close()
        if self.greenlet is not None:
            self.greenlet.kill(block=False)
            self.greenlet = None
        if self.pipe is not None:
            PIPES.put(self.pipe, empty=False)
            self.pipe = None


class Tunnel:
    """Relays bytes between two sockets it owns until both directions end.

    `on_close(up_bytes, down_bytes)` runs once, after both sockets are closed.
    """

    __slots__ = (
        "sockets",
        "up",
        "down",
        "on_close",
        "timer",
        "idle_timeout",
        "last_active",
        "closed",
    )

    def __init__(
        self,
        client_fd: int,
        upstream_fd: int,
        client_rest: bytes,
        upstream_rest: bytes,
        idle_timeout,
        on_close,
    ):
        client = _socket.socket(fileno=client_fd)
        upstream = _socket.socket(fileno=upstream_fd)
        client.setblocking(False)
        upstream.setblocking(False)
        self.sockets = (client, upstream)
        self.up = _Direction(self, client, upstream, client_rest)
        self.down = _Direction(self, upstream, client, upstream_rest)
        self.on_close = on_close
        self.idle_timeout = idle_timeout
        self.last_active = time.monotonic()
        self.closed = False
        self.timer = None
        if idle_timeout:
            self.timer = get_hub().loop.timer(idle_timeout, idle_timeout)
            self.timer.start(self._check_idle)

    def start(self) -> None:
        self.up.start()
        self.down.start()

    def direction_done(self) -> None:
        if self.up.done and self.down.done:
            self.close()

    def _check_idle(self) -> None:
        if time.monotonic() - self.last_active >= self.idle_timeout:
            self.close()

    def close(self) -> None:
        """Tear down both directions and sockets (idempotent)."""
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.close()
        self.up.stop()
        self.down.stop()
        for sock in self.sockets:
            sock.close()
        self.on_close(self.up.moved, self.down.moved)
