"""Errors as values: each carries the status and the one-line reason the client sees.

One renderer turns any of them into a complete text/plain response. The proxy
only renders one when nothing of a response has been sent yet; after that an error
closes the connection instead (a second status line would corrupt the stream).
"""

from http import HTTPStatus
from typing import Sequence, Tuple

Header = Tuple[bytes, bytes]


class ProxyError(Exception):
    """A request the proxy answers itself, with `status` and a text/plain `reason`."""

    def __init__(self, status: int, reason: str, headers: Sequence[Header] = ()):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = tuple(headers)


class ClientError(ProxyError):
    """The client's request is malformed, oversized or not routable (4xx)."""


class UpstreamError(ProxyError):
    """The upstream could not be reached or answered garbage (502, 504)."""

    def __init__(self, reason: str, status: int = 502):
        super().__init__(status, reason)


class ConnectionGone(Exception):
    """A peer closed or reset its connection; nothing can be sent to it any more."""


def status_line(status: int) -> bytes:
    """`HTTP/1.1 <status> <phrase>` for statuses the proxy produces itself."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode("ascii"))


def render_error(error: ProxyError) -> bytes:
    """A complete response for `error`, announcing that the connection closes."""
    body = error.reason.encode("utf-8", "replace")
    head = [
        status_line(error.status),
        b"Content-Type: text/plain; charset=utf-8\r\n",
        b"Content-Length: %d\r\n" % len(body),
        b"Connection: close\r\n",
    ]
    head.extend(b"%s: %s\r\n" % (name, value) for name, value in error.headers)
    head.append(b"\r\n")
    return b"".join(head) + body
