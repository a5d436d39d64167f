"""The access log: one line per request on stderr, written in batches.

Going through `logging` and a write(2) per request cost more CPU than proxying
the request itself. Lines are formatted once, kept in memory and flushed
together at most FLUSH_SECONDS later (or as soon as BATCH_LINES accumulate,
and on shutdown), in the same layout as the rest of the log.
"""

import sys
import time

from gevent import get_hub

FLUSH_SECONDS = 0.1
BATCH_LINES = 512


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

    A line is bytes made by one template: method and path are bytes already
    (llhttp let no control characters into them), and the timestamp prefix is
    rebuilt once per second.
    """

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self._lines = []
        self._timer = None
        self._second = -1
        self._stamp = b""

    def record(self, peer: bytes, exchange: "Exchange") -> None:
        """Queue the greppable line for one exchange: client, method, path, port, upstream, ..."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)).encode()
        head, target = exchange.head, exchange.target
        line = _LINE % (
            self._stamp,
            int((now - second) * 1000),
            peer,
            head.method if head else b"-",
            head.target if head else b"-",
            target.log_name if target else b"port=- upstream=-",
            exchange.status,
            exchange.sent,
            int((time.monotonic() - exchange.started) * 1000 + 0.5),
        )
        if exchange.error:
            line = b'%s error="%s"\n' % (line[:-1], exchange.error.encode("utf-8", "replace"))
        self._lines.append(line)
        if len(self._lines) >= BATCH_LINES:
            self.flush()
        elif self._timer is None:
            self._timer = get_hub().loop.timer(FLUSH_SECONDS)
            self._timer.start(self.flush)

    def flush(self) -> None:
        """Write every queued line now."""
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        if not self._lines:
            return
        data = b"".join(self._lines)
        self._lines = []
        try:
            self.stream.flush()  # text written by `logging` goes first
            getattr(self.stream, "buffer", self.stream).write(data)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr gone (closed pipe): the proxy keeps serving


_LINE = b"%s,%03d INFO client=%s method=%s path=%s %s status=%d bytes=%d ms=%d\n"
