"""Moving message bodies: parsed events in, correctly framed bytes out.

`MessageReader` pairs a socket with a parser and hands out events; the copy
functions write bodies with the framing the receiving side needs. A peer that
goes away surfaces as ConnectionGone, and a body cut short is never completed:
the caller closes the other side instead of writing a final chunk.
"""

import gevent
from gevent import socket

from . import deadlines
from .errors import ConnectionGone, ProxyError
from .parser import END
from .relay import READ_SIZE, SCRATCH, SCRATCH_VIEW, SPLICE_AFTER, can_splice, copy_exact

CHUNKED_END = b"0\r\n\r\n"


class MessageReader:
    """A socket and the parser its bytes go to; callers read more only when the parser's
    queue of events is empty."""

    __slots__ = ("sock", "parser", "received")

    def __init__(self, sock, parser):
        self.sock = sock
        self.parser = parser
        self.received = 0

    def read_more(self, timeout, wait_first: bool = False) -> None:
        """Read once (waiting at most `timeout` s) and feed the parser; ConnectionGone on EOF.

        `wait_first`: the peer is known to owe us an answer (see deadlines.recv_into).
        """
        try:  # into a scratch buffer: the parser copies what it keeps, nothing yields meanwhile
            got = deadlines.recv_into(self.sock, SCRATCH, timeout, wait_first)
        except socket.timeout:
            raise
        except OSError as exc:
            raise ConnectionGone(str(exc)) from None
        if not got:
            raise ConnectionGone("peer closed the connection")
        self.received += got
        self.parser.feed(SCRATCH_VIEW[:got])


def receive(sock, size: int, timeout) -> bytes:
    """recv that reports a vanished peer as ConnectionGone; timeouts still raise socket.timeout."""
    try:
        return deadlines.recv(sock, size, timeout)
    except socket.timeout:
        raise
    except OSError as exc:
        raise ConnectionGone(str(exc)) from None


def peek(sock):
    """A non-blocking look at `sock`: None if nothing is waiting, b"" if the peer closed
    (or reset) it, else the first waiting byte, left unread."""
    try:
        return sock._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def send_all(sock, data) -> None:
    """Write all of `data`: one send() in the usual case.

    gevent's sendall asks the kernel for SO_SNDBUF on every call; a head and a
    small body almost always fit the socket buffer, so the first try is a plain
    send on the underlying non-blocking socket, and gevent waits only if needed.
    """
    try:
        sent = sock._sock.send(data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def send(sock, data) -> None:
    """send_all that reports a vanished peer as ConnectionGone."""
    try:
        send_all(sock, data)
    except OSError as exc:
        raise ConnectionGone(str(exc)) from None


def copy_events(reader: MessageReader, dst, chunked: bool, timeout) -> int:
    """Copy body events to `dst` until END, chunk-framed if `chunked`; returns bytes copied.

    Whatever one read produced leaves in one gathered write.
    """
    copied = 0
    events = reader.parser.events
    while True:
        while not events:
            reader.read_more(timeout)
        pieces = []
        taken, ended = take_queued_body(reader, chunked, pieces)
        copied += taken
        send_pieces(dst, pieces)
        if ended:
            return copied


def take_queued_body(reader: MessageReader, chunked: bool, pieces: list):
    """Append the body events the parser already produced to `pieces`, framed.

    Returns (body bytes taken, whether the message END was reached); with
    `chunked`, a reached END also appends the terminating zero chunk. Chunk
    framing is added as separate pieces so bodies are never copied to frame them.
    """
    events = reader.parser.events
    taken = 0
    while events:
        event = events[0]
        if event is END:
            events.popleft()
            if chunked:
                pieces.append(CHUNKED_END)
            return taken, True
        if event.__class__ is not bytes:  # the next message's head
            break
        events.popleft()
        taken += len(event)
        if chunked:
            pieces += (b"%x\r\n" % len(event), event, b"\r\n")
        else:
            pieces.append(event)
    return taken, False


def send_pieces(sock, pieces: list) -> None:
    """Write `pieces` in order with one gathered send in the usual case."""
    if len(pieces) < 2:
        if pieces:
            send(sock, pieces[0])
        return
    try:
        try:
            sent = sock._sock.sendmsg(pieces)  # as in send_all: gevent waits only if needed
        except BlockingIOError:
            sent = 0
        if sent < sum(map(len, pieces)):
            sock.sendall(memoryview(b"".join(pieces))[sent:])
    except OSError as exc:
        raise ConnectionGone(str(exc)) from None


def copy_raw(src, dst, remaining, chunked: bool, timeout) -> int:
    """Copy `remaining` bytes (None: until EOF) from `src` to `dst`; returns bytes copied.

    A plain (not re-chunked) body that has proved large, or is announced large,
    continues with splice(2): its bytes never enter Python. Raises ConnectionGone
    if `src` ends before `remaining` bytes arrived.
    """
    copied = 0
    while remaining is None or copied < remaining:
        left = None if remaining is None else remaining - copied
        if not chunked and can_splice and (copied >= SPLICE_AFTER or (left or 0) >= SPLICE_AFTER):
            copied += _splice_rest(src, dst, left)
            break
        data = receive(src, READ_SIZE if left is None else min(READ_SIZE, left), timeout)
        if not data:
            break
        copied += len(data)
        send_pieces(dst, [b"%x\r\n" % len(data), data, b"\r\n"] if chunked else [data])
    if remaining is not None and copied < remaining:
        raise ConnectionGone("peer closed before the end of the body")
    if chunked:
        send(dst, CHUNKED_END)
    return copied


def _splice_rest(src, dst, left) -> int:
    try:
        return copy_exact(src, dst, left)
    except OSError as exc:
        raise ConnectionGone(str(exc)) from None


class Uploader:
    """The request-body copy greenlet, paired with the handler that relays the response."""

    __slots__ = ("reader", "upstream", "chunked", "timeout", "greenlet", "ok", "error")

    def __init__(self, reader, upstream, chunked, timeout):
        self.reader, self.upstream, self.chunked, self.timeout = reader, upstream, chunked, timeout
        self.greenlet = None
        self.ok = False
        self.error = None  # a malformed body (bad chunk): the client gets this, not a 502

    def start(self):
        self.greenlet = gevent.spawn(self._run)

    def _run(self):
        try:
            copy_events(self.reader, self.upstream, self.chunked, self.timeout)
            self.ok = True
        except (ConnectionGone, ProxyError, OSError) as exc:
            if isinstance(exc, ProxyError):
                self.error = exc
            try:  # wake the handler: the exchange cannot complete
                self.upstream.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def finished(self) -> bool:
        """Whether the whole body went upstream; a still-running copy is stopped."""
        if not self.greenlet.dead:
            self.greenlet.kill(block=True)
        return self.ok
