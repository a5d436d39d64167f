"""The access log: one line per request on stderr, written in batches.

Going through `logging` and a write(2) per request cost more CPU than proxying
the request itself. Lines are formatted once, kept in memory and flushed
together at most FLUSH_SECONDS later (or as soon as BATCH_BYTES accumulate,
and on shutdown), in the same layout as the rest of the log.
"""

import sys
import time

from gevent import get_hub

FLUSH_SECONDS = 0.1
BATCH_BYTES = 64 * 1024


class Exchange:
    """What the access log says about one request."""

    __slots__ = ("head", "target", "status", "sent", "started", "error")

    def __init__(self, head):
        self.head = head
        self.target = None
        self.status = 0
        self.sent = 0
        self.started = time.monotonic()
        self.error = None


class AccessLog:
    """Buffered writer of access-log lines to a stream (stderr by default).

    Lines are bytes formatted by one template: the request's method and path are
    bytes already, and llhttp let no control characters into them.
    """

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self._lines = []
        self._size = 0
        self._timer = None
        self._second = -1
        self._stamp = b""

    def write(self, message: bytes) -> None:
        """Queue `message` as one INFO line, timestamped now."""
        now = time.time()
        second = int(now)
        if second != self._second:  # strftime once per second, not per request
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)).encode()
        line = b"%s,%03d INFO %s\n" % (self._stamp, (now - second) * 1000, message)
        self._lines.append(line)
        self._size += len(line)
        if self._size >= BATCH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = get_hub().loop.timer(FLUSH_SECONDS)
            self._timer.start(self.flush)

    def record(self, peer: str, exchange: "Exchange") -> None:
        """The greppable line for one exchange: client, method, path, port, upstream, ..."""
        head, target = exchange.head, exchange.target
        line = _LINE % (
            peer.encode(),
            head.method if head else b"-",
            head.target if head else b"-",
            str(target.port).encode() if target else b"-",
            target.host.encode() if target else b"-",
            exchange.status,
            exchange.sent,
            (time.monotonic() - exchange.started) * 1000,
        )
        if exchange.error:
            line += b' error="%s"' % exchange.error.encode("utf-8", "replace")
        self.write(line)

    def flush(self) -> None:
        """Write every queued line now."""
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        if not self._lines:
            return
        data = b"".join(self._lines)
        self._lines = []
        self._size = 0
        try:
            self.stream.flush()  # text written by `logging` goes first
            getattr(self.stream, "buffer", self.stream).write(data)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr gone (closed pipe): the proxy keeps serving


_LINE = b"client=%s method=%s path=%s port=%s upstream=%s status=%d bytes=%d ms=%.0f"
