"""Real peers for the integration tests: upstream servers and a raw HTTP client.

`Upstream` is a threaded TCP server (one thread per accepted connection) that
runs a handler function on a `Wire`: a socket with a read buffer that reads
HTTP heads and bodies by their framing. The same `Wire` is the raw client the
tests use, so framing bugs show up as a head that does not parse where the next
response should start. Handlers here: an HTTP echo that describes the request
it saw as JSON, a raw TCP echo, a raw-upgrade echo, and a minimal RFC 6455
WebSocket echo server. Every socket has a timeout; nothing here sleeps.
"""

import base64
import contextlib
import hashlib
import json
import socket
import struct
import threading

TIMEOUT = 10.0
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Message:
    """A parsed head plus body: `start` is the three start-line parts."""

    def __init__(self, start, headers, raw_head):
        self.start = start
        self.headers = headers
        self.raw_head = raw_head
        self.body = b""

    @property
    def status(self) -> int:
        return int(self.start[1])

    def get(self, name: str):
        values = self.get_all(name)
        return values[0] if values else None

    def get_all(self, name: str):
        name = name.lower().encode()
        return [v.decode("latin-1") for n, v in self.headers if n.lower() == name]

    def names(self):
        return [n.decode("latin-1") for n, _ in self.headers]


class Wire:
    """A connected socket with a read buffer."""

    def __init__(self, sock, timeout=TIMEOUT):
        self.sock = sock
        sock.settimeout(timeout)
        self.buf = bytearray()  # deleting a prefix is cheap: 50 MB bodies stay linear

    @classmethod
    def connect(cls, port, host="127.0.0.1", timeout=TIMEOUT):
        return cls(socket.create_connection((host, port), timeout=timeout), timeout)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> bool:
        data = self.sock.recv(256 * 1024)
        self.buf += data
        return bool(data)

    def _take(self, n: int) -> bytes:
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_until(self, marker: bytes) -> bytes:
        while (at := self.buf.find(marker)) < 0:
            if not self._more():
                raise EOFError(f"EOF before {marker!r}; have {bytes(self.buf[:200])!r}")
        return self._take(at + len(marker))

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._more():
                raise EOFError(f"EOF after {len(self.buf)} of {n} bytes")
        return self._take(n)

    def read_to_eof(self) -> bytes:
        while self._more():
            pass
        return self._take(len(self.buf))

    def at_eof(self) -> bool:
        """True if the peer closed with nothing left unread (waits up to the timeout)."""
        return not self.buf and not self._more()

    def read_head(self):
        """The next head, or None on a clean EOF before any byte of it."""
        if not self.buf and not self._more():
            return None
        raw = self.read_until(b"\r\n\r\n")
        lines = raw[:-4].split(b"\r\n")
        start = lines[0].split(b" ", 2)
        headers = [tuple(p.strip() for p in line.split(b":", 1)) for line in lines[1:]]
        return Message([p.decode("latin-1") for p in start], headers, raw)

    def read_chunk(self) -> bytes:
        """One chunk's data; b"" for the last chunk (trailers are not expected)."""
        size = int(self.read_until(b"\r\n").split(b";")[0], 16)
        if size == 0:
            self.read_until(b"\r\n")
            return b""
        data = self.read_exact(size)
        assert self.read_exact(2) == b"\r\n"
        return data

    def read_chunked(self) -> bytes:
        pieces = []
        while piece := self.read_chunk():
            pieces.append(piece)
        return b"".join(pieces)

    def read_body(self, msg, until_close_allowed: bool) -> bytes:
        if (msg.get("transfer-encoding") or "").lower() == "chunked":
            return self.read_chunked()
        if msg.get("content-length") is not None:
            return self.read_exact(int(msg.get("content-length")))
        return self.read_to_eof() if until_close_allowed else b""

    def read_request(self):
        msg = self.read_head()
        if msg is not None:
            msg.body = self.read_body(msg, until_close_allowed=False)
        return msg

    def read_response(self, method="GET"):
        """One response; its body framed as RFC 9112 6.3 says for `method`."""
        msg = self.read_head()
        if msg is None:
            raise EOFError("connection closed before a response")
        if method != "HEAD" and msg.status >= 200 and msg.status not in (204, 304):
            msg.body = self.read_body(msg, until_close_allowed=True)
        return msg

    def close(self) -> None:
        self.sock.close()


class Upstream:
    """A threaded TCP server on `host`; `handler(wire, upstream)` serves each connection."""

    def __init__(self, handler, host="127.0.0.1", port=0, name=None):
        self.handler = handler
        self.name = name or host
        self.accepted = 0
        self.requests = []  # Messages seen by the HTTP handlers, in order
        self.lock = threading.Lock()
        self.listener = socket.create_server((host, port))
        self.host, self.port = self.listener.getsockname()[:2]
        self._conns = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            self.handler(Wire(conn), self)
        except (OSError, EOFError):
            pass
        finally:
            conn.close()

    def close(self):
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self.listener.close()
        self._thread.join(TIMEOUT)
        with self.lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def http_server(respond):
    """A handler serving requests in a keep-alive loop; `respond(req, wire, upstream)` answers."""

    def handler(wire, upstream):
        while True:
            req = wire.read_head()
            if req is None:
                return
            if (req.get("expect") or "").lower() == "100-continue":
                wire.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            req.body = wire.read_body(req, until_close_allowed=False)
            with upstream.lock:
                upstream.requests.append(req)
            respond(req, wire, upstream)
            if (req.get("connection") or "").lower() == "close":
                return

    return handler


def response(status=200, headers=(), body=b"", reason="OK") -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{n}: {v}" for n, v in headers]
    if not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def describe(req, wire, upstream):
    """The echo upstream's answer: who answered, and exactly what it received."""
    info = {
        "server": upstream.name,
        "port": upstream.port,
        "method": req.start[0],
        "target": req.start[1],
        "version": req.start[2],
        "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in req.headers],
        "body_len": len(req.body),
        "body_sha256": hashlib.sha256(req.body).hexdigest(),
    }
    body = json.dumps(info).encode()
    wire.send(response(200, [("Content-Type", "application/json")], body))


echo_http = http_server(describe)


def answers(raw: bytes):
    """A handler that reads one request and sends `raw` as it is (cut short, not HTTP, ...)."""

    def handler(wire, upstream):
        wire.read_request()
        wire.send(raw)

    return handler


def tcp_echo(wire, upstream):
    """Echo raw bytes; after the client's EOF, say goodbye and close (half-close check)."""
    while True:
        data = wire.sock.recv(65536)
        if not data:
            wire.send(b"goodbye after EOF")
            return
        wire.send(data)


def raw_upgrade_echo(wire, upstream):
    """Accept any `Upgrade:` with 101, then echo raw bytes (a non-WebSocket protocol)."""
    req = wire.read_request()
    upstream.requests.append(req)
    proto = req.get("upgrade")
    wire.send(response(101, [("Connection", "Upgrade"), ("Upgrade", proto)], reason="Switching"))
    if wire.buf:
        wire.send(wire.read_exact(len(wire.buf)))
    tcp_echo(wire, upstream)


# -- WebSocket (RFC 6455), server side -------------------------------------------


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def read_frame(wire):
    """(fin, opcode, payload) of the next frame, unmasked."""
    b0, b1 = wire.read_exact(2)
    length = b1 & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", wire.read_exact(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", wire.read_exact(8))
    mask = wire.read_exact(4) if b1 & 0x80 else None
    payload = wire.read_exact(length)
    return bool(b0 & 0x80), b0 & 0x0F, _unmask(payload, mask) if mask else payload


def frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked (server) frame with FIN set."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def ws_echo(wire, upstream):
    """Handshake, then echo messages with their opcode; pong pings; echo the close code."""
    req = wire.read_request()
    upstream.requests.append(req)
    key = req.get("sec-websocket-key").encode()
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
    wire.send(
        response(
            101,
            [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept)],
            reason="Switching Protocols",
        )
    )
    message, message_op = b"", 0
    while True:
        fin, opcode, payload = read_frame(wire)
        if opcode == 0x8:
            wire.send(frame(0x8, payload[:2]))
            return
        if opcode == 0x9:
            wire.send(frame(0xA, payload))
            continue
        message += payload
        message_op = opcode or message_op
        if fin:
            wire.send(frame(message_op, message))
            message = b""


# -- requests through the proxy under test -------------------------------------------


def routed(method, target, port, headers=(), body=b"", version="HTTP/1.1") -> bytes:
    """A request's bytes, routed to `port` by X-Cmux-Port-Internal."""
    lines = [f"{method} {target} {version}", "Host: example.test", f"X-Cmux-Port-Internal: {port}"]
    lines += [f"{n}: {v}" for n, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def send_routed(proxy, method, target, port, headers=(), body=b"", version="HTTP/1.1") -> Wire:
    """A new client connection to `proxy` that has sent one request routed to `port`."""
    wire = Wire.connect(proxy.port)
    wire.send(routed(method, target, port, headers, body, version))
    return wire


def described(msg):
    """The echo upstream's JSON answer."""
    assert msg.status == 200, (msg.start, msg.body[:300])
    return json.loads(msg.body)
