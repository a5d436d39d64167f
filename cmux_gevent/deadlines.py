"""Timed socket reads with coarse deadlines: one timer per process, not one per wait.

A gevent socket with a timeout arms a `gevent.Timeout` (a Python object and a
libev timer, started and stopped) for every wait that blocks. A proxied request
waits twice, for the upstream's answer and for the client's next request, and
those two Timeouts cost about as much CPU as everything else gevent does for
the request. Our read limits are idle limits counted in seconds, so they are
kept here instead: a waiting greenlet notes when it is due, and one repeating
timer throws `socket.timeout` into the waits that are past due. A wait ends at
most SWEEP_SECONDS after its deadline.

Sends rarely block; they keep gevent's own timeout, SEND_SECONDS on every socket.
"""

import time
from typing import Dict, Optional

from gevent import get_hub, getcurrent, socket

SWEEP_SECONDS = 0.25
SEND_SECONDS = 60.0  # like nginx's send_timeout: a peer that takes no bytes this long is gone


class _Sweeper:
    """The greenlets waiting under a deadline, and the timer that ends late waits."""

    def __init__(self):
        self.due: Dict[object, float] = {}
        self._timer = None

    def wait_readable(self, sock, timeout: Optional[float]) -> None:
        """Block until `sock` has bytes or EOF, at most about `timeout` s (None: no limit)."""
        if timeout is None:
            get_hub().wait(sock._read_event)
            return
        if timeout <= 0:
            raise socket.timeout("timed out")
        current = getcurrent()
        self.due[current] = time.monotonic() + timeout
        hub = get_hub()
        if self._timer is None:
            self._timer = hub.loop.timer(SWEEP_SECONDS, SWEEP_SECONDS, ref=False)
            self._timer.start(self._sweep)
        try:
            hub.wait(sock._read_event)
        finally:
            self.due.pop(current, None)

    def _sweep(self) -> None:
        now = time.monotonic()
        late = [waiter for waiter, due in self.due.items() if due <= now]
        for waiter in late:  # each throw runs that greenlet until it blocks again
            due = self.due.get(waiter)
            if due is not None and due <= now:
                del self.due[waiter]
                waiter.throw(socket.timeout("timed out"))
        if not self.due:
            self._timer.close()
            self._timer = None


_sweeper = _Sweeper()
wait_readable = _sweeper.wait_readable


def recv_into(sock, buffer, timeout: Optional[float], wait_first: bool = False) -> int:
    """`sock.recv_into(buffer)`, waiting at most about `timeout` s (None: no limit).

    `wait_first` skips the first attempt: right after we sent a request or a
    response the peer has not answered yet, and a read that fails costs a
    syscall and an exception.
    """
    raw = sock._sock
    if wait_first:
        wait_readable(sock, timeout)
    while True:
        try:
            return raw.recv_into(buffer)
        except BlockingIOError:
            wait_readable(sock, timeout)


def recv(sock, size: int, timeout: Optional[float]) -> bytes:
    """`sock.recv(size)`, waiting at most about `timeout` s (None: no limit)."""
    raw = sock._sock
    while True:
        try:
            return raw.recv(size)
        except BlockingIOError:
            wait_readable(sock, timeout)
