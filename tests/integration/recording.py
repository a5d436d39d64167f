"""A recording upstream: a real TCP server that keeps every byte it receives.

Attack tests point the proxy at it and then prove what did (or did not) reach a
dev server: how many connections were opened, the exact bytes of each, and
whether the proxy closed them. It answers every complete request it can frame
with one fixed response, so well-formed traffic through the proxy still works.
Its own framing is deliberately independent of the proxy's parser (plain byte
splitting), and `malformed_heads()` checks the received heads against RFC 9112
grammar with regular expressions.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time

import psutil

OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
REQUEST_LINE = re.compile(
    rb"^" + _TOKEN + rb" (/[\x21-\x7e]*|\*|[^ \x00-\x20\x7f]+:\d+) HTTP/1\.1$"
)
FIELD_LINE = re.compile(
    rb"^(" + _TOKEN + rb"): ([\x21-\x7e\x80-\xff]([\x20-\x7e\x80-\xff\t]*[\x21-\x7e\x80-\xff])?)?$"
)


class Connection:
    """What one upstream connection received, and how it ended."""

    def __init__(self):
        self.data = bytearray()
        self.closed = threading.Event()  # the proxy closed (EOF or reset)
        self.answered = 0


class RecordingUpstream:
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
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(512)
        self.host, self.port = self._listener.getsockname()
        self._stopping = False
        self._socks = []
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._stopping = True
        self._listener.close()
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
        deadline = time.monotonic() + timeout
        while len(self.connections) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(self.connections)} upstream connections, expected {count}"
                )
            time.sleep(0.01)
        return list(self.connections)

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
            data = bytes(conn.data)
            found.extend(part for part in _split_heads(data))
        return found

    def malformed_heads(self) -> list[bytes]:
        return [head for head in self.heads() if not well_formed(head)]

    # -- serving -----------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            conn = Connection()
            with self._lock:
                self.connections.append(conn)
                self._socks.append(sock)
            threading.Thread(target=self._serve, args=(sock, conn), daemon=True).start()

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


# -- a raw client: exact bytes in, the proxy's reply and whether it closed -------


class Reply:
    """The bytes a proxy sent back before closing (or before the timeout)."""

    def __init__(self, data: bytes, closed: bool):
        self.data = data
        self.closed = closed
        head, _, self.body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")

    def __repr__(self):
        return f"Reply(status={self.status}, closed={self.closed}, data={self.data[:200]!r})"


def send_raw(port: int, data: bytes, timeout: float = 5.0, host: str = "127.0.0.1") -> Reply:
    """Send `data`, then read until the proxy closes or `timeout` passes."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_until_close(sock, timeout)


def read_until_close(sock, timeout: float) -> Reply:
    received = b""
    deadline = time.monotonic() + timeout
    closed = False
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            closed = True
            break
        if not data:
            closed = True
            break
        received += data
    return Reply(received, closed)


def read_response(sock, timeout: float = 5.0) -> Reply:
    """Read exactly one Content-Length-framed response from a keep-alive connection."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            return Reply(data, True)
        data += more
    reply = Reply(data, False)
    want = int(reply.headers.get("content-length", "0"))
    while len(reply.body) < want:
        more = sock.recv(65536)
        if not more:
            return Reply(data, True)
        data += more
        reply = Reply(data, False)
    return reply


class ScriptedUpstream:
    """Listen on `host`:0 and run `script(sock)` for each connection in its own thread.

    For upstreams that misbehave on cue (half a response, then a close). What each
    script returned, or the exception it raised, is appended to `results`.
    """

    def __init__(self, script, host: str = "127.0.0.1"):
        self.script = script
        self.results = []
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(512)
        self.host, self.port = self._listener.getsockname()
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._listener.close()

    def wait_results(self, count: int, timeout: float = 5.0) -> list:
        deadline = time.monotonic() + timeout
        while len(self.results) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.results)} scripts finished, expected {count}")
            time.sleep(0.01)
        return list(self.results)

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._run, args=(sock,), daemon=True).start()

    def _run(self, sock) -> None:
        try:
            self.results.append(self.script(sock))
        except Exception as exc:  # noqa: BLE001 -- the test inspects it
            self.results.append(exc)
        finally:
            sock.close()


def recv_head(sock, timeout: float = 5.0) -> bytes:
    """Read up to and including the blank line ending a head (the rest stays in `sock`'s data)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(1)
        if not more:
            raise ConnectionError(f"closed after {data!r}")
        data += more
    return data


def wait_closed(sock, timeout: float = 5.0) -> bool:
    """Read and discard until EOF or reset; True if that happened within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except OSError:
            return True
    return False


# -- watching the proxy process --------------------------------------------------

CLOSE_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


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
    """Poll until the process has at most `at_most` fds open; returns the last count."""
    process = psutil.Process(pid)
    deadline = time.monotonic() + timeout
    count = process.num_fds()
    while count > at_most and time.monotonic() < deadline:
        time.sleep(0.05)
        count = process.num_fds()
    return count


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


#: relay.py keeps up to this many empty splice pipes (two fds each) for the next large body.
PIPE_POOL_FDS = 2 * 16


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
    """Poll until the process holds at most `at_most` sockets; returns the last census."""
    deadline = time.monotonic() + timeout
    census = fd_census(pid)
    while census.get("socket", 0) > at_most and time.monotonic() < deadline:
        time.sleep(0.05)
        census = fd_census(pid)
    return census
