"""A raw client for attack tests: exact bytes in, the proxy's reply and whether it closed.

Nothing here parses the way the proxy does: a reply is split at the first blank
line and read by Content-Length at most, so a framing bug in the proxy shows up
as bytes that do not fit. Standard library only (tests/stress/compare_nginx.py
imports it outside pytest).
"""

from __future__ import annotations

import socket
import time


def request(port: int, *extra: bytes, target: bytes = b"/", close: bool = True) -> bytes:
    """A GET routed to `port`, with the `extra` header lines, closing unless told not to."""
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: t", b"X-Cmux-Port-Internal: %d" % port]
    lines.extend(extra)
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


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


def recv_until(sock, done, data: bytes = b"", size: int = 65536) -> tuple[bytes, bool]:
    """Receive onto `data` until `done(data)`: (data, closed), closed if EOF came first.

    The socket's own timeout bounds each wait (socket.timeout propagates)."""
    while not done(data):
        more = sock.recv(size)
        if not more:
            return data, True
        data += more
    return data, False


def send_raw(port: int, data: bytes, timeout: float = 5.0, host: str = "127.0.0.1") -> Reply:
    """Send `data`, then read until the proxy closes or `timeout` passes."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_until_close(sock, timeout)


def read_until_close(sock, timeout: float) -> Reply:
    """Everything until EOF or a reset (closed) or until `timeout` passes (not closed)."""
    received = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        except OSError:
            return Reply(received, True)
        if not data:
            return Reply(received, True)
        received += data
    return Reply(received, False)


def wait_closed(sock, timeout: float = 5.0) -> bool:
    """Read and discard until EOF or reset; True if that happened within `timeout`."""
    return read_until_close(sock, timeout).closed


def read_response(sock, timeout: float = 5.0) -> Reply:
    """Read exactly one Content-Length-framed response from a keep-alive connection.

    The head is read a byte at a time and the body to its length, so a pipelined
    next response that arrived in the same segment stays in the socket.
    """
    sock.settimeout(timeout)
    head, closed = recv_until(sock, lambda seen: seen.endswith(b"\r\n\r\n"), size=1)
    if closed:
        return Reply(head, True)
    length = int(Reply(head, False).headers.get("content-length", "0"))
    body = b""
    while len(body) < length:
        more = sock.recv(length - len(body))
        if not more:
            return Reply(head + body, True)
        body += more
    return Reply(head + body, False)


def recv_head(sock, timeout: float = 5.0) -> bytes:
    """Read up to and including the blank line ending a head, a byte at a time so
    that what follows stays in the socket."""
    sock.settimeout(timeout)
    data, closed = recv_until(sock, lambda seen: seen.endswith(b"\r\n\r\n"), size=1)
    if closed:
        raise ConnectionError(f"closed after {data!r}")
    return data
