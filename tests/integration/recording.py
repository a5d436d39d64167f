"""Upstreams for attack tests: one that records every byte, one that runs a script.

Attack tests point the proxy at a `RecordingUpstream` and then prove what did (or
did not) reach a dev server: how many connections were opened, the exact bytes of
each, and whether the proxy closed them. It answers every complete request it can
frame with one fixed response, so well-formed traffic through the proxy still
works. Its own framing is deliberately independent of the proxy's parser (plain
byte splitting), and `malformed_heads()` checks the received heads against RFC
9112 grammar with regular expressions. A `ScriptedUpstream` misbehaves on cue.
Standard library only (tests/stress/compare_nginx.py imports it outside pytest).
"""

from __future__ import annotations

import re
import socket
import threading
import time

OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
REQUEST_LINE = re.compile(
    rb"^" + _TOKEN + rb" (/[\x21-\x7e]*|\*|[^ \x00-\x20\x7f]+:\d+) HTTP/1\.1$"
)
FIELD_LINE = re.compile(
    rb"^(" + _TOKEN + rb"): ([\x21-\x7e\x80-\xff]([\x20-\x7e\x80-\xff\t]*[\x21-\x7e\x80-\xff])?)?$"
)


class _Server:
    """Listen on `host`:0; `_accepted(sock)` takes each connection (in accept order)."""

    def __init__(self, host: str):
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(512)
        self.host, self.port = self._listener.getsockname()
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._listener.close()

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # closed
            self._accepted(sock)

    def _accepted(self, sock) -> None:
        raise NotImplementedError


def _spawn(target, *args) -> None:
    threading.Thread(target=target, args=args, daemon=True).start()


def _wait_length(items: list, count: int, timeout: float, what: str) -> list:
    """A copy of `items` once it holds `count` entries; TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while len(items) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(items)} {what}, expected {count}")
        time.sleep(0.01)
    return list(items)


class Connection:
    """What one upstream connection received, and how it ended."""

    def __init__(self):
        self.data = bytearray()
        self.closed = threading.Event()  # the proxy closed (EOF or reset)
        self.answered = 0


class RecordingUpstream(_Server):
    """Listen on `host`:0; `answer` False means accept and never send a byte.

    `response` is what each request gets (bytes, sent whole); it may be malformed
    on purpose. With `answer` True, a request whose body cannot be framed simply
    gets no answer: the bytes are still recorded.
    """

    def __init__(self, host: str = "127.0.0.1", response: bytes = OK_RESPONSE, answer: bool = True):
        self.response = response
        self.answer = answer
        self.connections: list[Connection] = []
        self._lock = threading.Lock()
        self._socks = []
        super().__init__(host)

    def close(self) -> None:
        super().close()
        with self._lock:
            for sock in self._socks:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    # -- what was received -------------------------------------------------------

    def received(self) -> bytes:
        with self._lock:
            return b"".join(bytes(c.data) for c in self.connections)

    def wait_connections(self, count: int, timeout: float = 5.0) -> list[Connection]:
        return _wait_length(self.connections, count, timeout, "upstream connections")

    def wait_all_closed(self, timeout: float = 5.0) -> None:
        """Wait until the proxy has closed every connection it opened to us."""
        deadline = time.monotonic() + timeout
        for conn in list(self.connections):
            if not conn.closed.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"upstream connection still open: received {bytes(conn.data)!r}")

    def heads(self) -> list[bytes]:
        """Every request head received, split at the blank line (bodies ignored)."""
        found = []
        for conn in list(self.connections):
            found.extend(_split_heads(bytes(conn.data)))
        return found

    def malformed_heads(self) -> list[bytes]:
        return [head for head in self.heads() if not well_formed(head)]

    # -- serving -----------------------------------------------------------------

    def _accepted(self, sock) -> None:
        conn = Connection()
        with self._lock:
            self.connections.append(conn)
            self._socks.append(sock)
        _spawn(self._serve, sock, conn)

    def _serve(self, sock, conn: Connection) -> None:
        pending = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                with self._lock:
                    conn.data += data
                pending += data
                while self.answer:
                    used = _complete_request(pending)
                    if used is None:
                        break
                    pending = pending[used:]
                    sock.sendall(self.response)
                    conn.answered += 1
        except OSError:
            pass
        finally:
            conn.closed.set()
            sock.close()


def _split_heads(data: bytes) -> list[bytes]:
    heads = []
    while data:
        used = _complete_request(data)
        end = data.find(b"\r\n\r\n")
        if end < 0:
            heads.append(data)  # an incomplete head counts as received
            break
        heads.append(data[: end + 4])
        if used is None:
            break
        data = data[used:]
    return heads


def _complete_request(data: bytes) -> int | None:
    """Bytes used by the first complete request in `data`, or None if incomplete or unframeable."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = data[: end + 4]
    lines = head[:-4].split(b"\r\n")[1:]
    fields = {}
    for line in lines:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    start = end + 4
    if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        return _chunked_end(data, start)
    length = fields.get(b"content-length", b"0")
    if not length.isdigit():
        return None
    stop = start + int(length)
    return stop if len(data) >= stop else None


def _chunked_end(data: bytes, pos: int) -> int | None:
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_text = data[pos:eol].split(b";")[0]
        if not re.fullmatch(rb"[0-9a-fA-F]{1,16}", size_text):
            return None
        size = int(size_text, 16)
        if size == 0:
            end = data.find(b"\r\n\r\n", eol)
            return None if end < 0 else end + 4
        pos = eol + 2 + size + 2
        if len(data) < pos:
            return None


def well_formed(head: bytes) -> bool:
    """Whether a request head is strict RFC 9112 HTTP/1.1 with unambiguous framing."""
    if not head.endswith(b"\r\n\r\n"):
        return False
    lines = head[:-4].split(b"\r\n")
    if not REQUEST_LINE.match(lines[0]):
        return False
    values = {}
    for line in lines[1:]:
        match = FIELD_LINE.match(line)
        if not match:
            return False
        values.setdefault(match.group(1).lower(), []).append(match.group(2) or b"")
    lengths = values.get(b"content-length", [])
    encodings = values.get(b"transfer-encoding", [])
    if lengths and (encodings or len(lengths) > 1 or not lengths[0].isdigit()):
        return False
    if encodings and encodings != [b"chunked"]:
        return False
    return len(values.get(b"host", [])) <= 1


class ScriptedUpstream(_Server):
    """Listen on `host`:0 and run `script(sock)` for each connection in its own thread.

    For upstreams that misbehave on cue (half a response, then a close). What each
    script returned, or the exception it raised, is appended to `results`.
    """

    def __init__(self, script, host: str = "127.0.0.1"):
        self.script = script
        self.results = []
        super().__init__(host)

    def wait_results(self, count: int, timeout: float = 5.0) -> list:
        return _wait_length(self.results, count, timeout, "scripts finished")

    def _accepted(self, sock) -> None:
        _spawn(self._run, sock)

    def _run(self, sock) -> None:
        try:
            self.results.append(self.script(sock))
        except Exception as exc:  # noqa: BLE001 -- the test inspects it
            self.results.append(exc)
        finally:
            sock.close()
