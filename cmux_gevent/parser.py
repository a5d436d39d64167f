"""httptools (llhttp) turned into a queue of events: heads, body pieces, ends.

The greenlet code feeds whatever bytes a socket gave it and then pops events in
order, so a pipelined second request simply waits in the queue behind the first.
Nothing here touches a socket. llhttp runs in its strict mode; the few things it
tolerates that a proxy must not (see `head.check_request`) are refused on top.
"""

from collections import deque
from typing import Deque, List, Optional, Union

import httptools

from .errors import ClientError, ProxyError, UpstreamError
from .head import Head, Header, response_problem

END = "end"  # a message ended; a body piece is queued as its bytes


class Limits:
    """Size limits on a request head; the defaults are the documented ones."""

    __slots__ = ("max_head_bytes", "max_headers", "max_request_line")

    def __init__(self, max_head_bytes=64 * 1024, max_headers=100, max_request_line=8 * 1024):
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self.max_request_line = max_request_line


Event = Union[Head, bytes, str]


class _Kind:
    """What differs between parsing requests and responses."""

    __slots__ = ("parser_class", "first_field", "check", "malformed", "oversized")

    def __init__(self, parser_class, first_field, check, malformed, oversized):
        self.parser_class = parser_class
        self.first_field = first_field  # the start line's first field, from the httptools parser
        self.check = check  # head -> why it must be refused (raised as malformed), or falsy
        self.malformed = malformed  # (why, upstream) -> the ProxyError to raise
        self.oversized = oversized  # (why, upstream) -> the ProxyError for a limit exceeded


class MessageParser:
    """Requests or responses (see `request_parser`, `response_parser`) as a queue of events.

    One class for both kinds, told apart by a `_Kind`: CPython 3.11 caches an
    attribute lookup for one type per call site, and with a subclass per kind the
    shared callbacks below ran uncached while a request and its response alternated
    (10 k more instructions per proxied request).
    """

    def __init__(self, limits: Limits, kind: _Kind, upstream: Optional[str] = None):
        self.events: Deque[Event] = deque()
        self.limits = limits
        self.kind = kind
        self.upstream = upstream  # the upstream a response parser reads from, for 502 texts
        self.upgraded_rest: Optional[bytes] = None
        self._parser = kind.parser_class(self)
        self._awaiting_head = True  # bytes fed now count against max_head_bytes
        self._head_bytes = 0
        self._feeding = 0  # the size of the read being parsed
        self._headers: List[Header] = []
        self._start_text = b""  # the request target, or the response's reason phrase

    # -- feeding -------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Parse `data`, queueing events; raise a ProxyError for a malformed message.

        After an upgrade (101 or CONNECT/Upgrade request) the bytes past the head
        are kept in `upgraded_rest` and nothing more should be fed.
        """
        self._feeding = len(data)
        if self._awaiting_head:
            self._head_bytes += self._feeding
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.upgraded_rest = bytes(data[upgrade.args[0] :])  # data may be a reused buffer
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, ProxyError):
                raise cause from None
            raise
        except httptools.HttpParserError as exc:
            raise self.malformed(str(exc)) from None
        if self._awaiting_head and self._head_bytes > self.limits.max_head_bytes:
            raise self.oversized("request header fields too large")

    @property
    def between_messages(self) -> bool:
        """Whether every message fed so far ended: the next byte starts a new one."""
        return self._awaiting_head and not self.events

    def malformed(self, why: str) -> ProxyError:
        return self.kind.malformed(why, self.upstream)

    def oversized(self, why: str) -> ProxyError:
        return self.kind.oversized(why, self.upstream)

    # -- httptools callbacks ---------------------------------------------------

    def on_header(self, name: bytes, value: bytes):
        # The hottest callback: only append. Counting happens once per head below,
        # and `feed` bounds the bytes of a head that is still incomplete.
        self._headers.append((name, value))

    def on_headers_complete(self):
        headers = self._headers
        self._headers = []  # chunked trailers land here and are dropped, never forwarded
        start_text = self._start_text
        self._start_text = b""
        if len(headers) > self.limits.max_headers:
            raise self.oversized("too many header fields")
        if self._head_bytes + self._feeding > self.limits.max_head_bytes:
            self._measure_head(start_text, headers)
        self._awaiting_head = False
        self._head_bytes = 0
        p = self._parser
        kind = self.kind
        keep_alive = p.should_keep_alive()
        head = Head(kind.first_field(p), start_text, "1.1", headers, keep_alive, p.should_upgrade())
        # llhttp accepts HTTP/0.9, 1.0, 1.1 and 2.0 only, and keeps all but 1.1 alive
        # only when a Connection field asks: a kept-alive head without one is 1.1, and
        # the getter (a str.format in httptools) runs for the others.
        if not keep_alive or b"connection" in head.names or b"proxy-connection" in head.names:
            head.version = p.get_http_version()
        if kind.check is not None:
            problem = kind.check(head)
            if problem:
                raise self.malformed(problem)
        self.events.append(head)

    def _measure_head(self, start_text: bytes, headers: List[Header]) -> None:
        """Refuse a head over max_head_bytes, counted as `name: value\r\n` lines.

        The bytes fed while awaiting a head, plus the read that completed it, bound
        its size; only a bound over the limit (a large read) gets here, so the limit
        holds for any chunking at the cost of one sum per large head.
        """
        size = len(start_text) + sum(len(n) + len(v) + 4 for n, v in headers)
        if size > self.limits.max_head_bytes:
            raise self.oversized("request header fields too large")

    def on_body(self, body: bytes):
        self.events.append(body)

    def on_message_complete(self):
        self._awaiting_head = True
        self._headers = []  # drops the trailers
        self.events.append(END)

    def on_url(self, url: bytes):  # requests only
        self._start_text += url
        if len(self._start_text) > self.limits.max_request_line:
            raise ClientError(414, "request line too long")

    def on_status(self, reason: bytes):  # responses only
        self._start_text += reason


def _bad_request(why: str, _upstream) -> ProxyError:
    return ClientError(400, f"bad request: {why}")


def _request_too_large(why: str, _upstream) -> ProxyError:
    return ClientError(431, why)


def _bad_response(why: str, upstream: str) -> ProxyError:
    return UpstreamError(f"upstream request error: malformed response from {upstream}: {why}")


_REQUEST = _Kind(
    httptools.HttpRequestParser,
    httptools.HttpRequestParser.get_method,
    None,  # check_request runs in the connection, after the queue
    _bad_request,
    _request_too_large,
)
_RESPONSE = _Kind(
    httptools.HttpResponseParser,
    httptools.HttpResponseParser.get_status_code,
    response_problem,
    _bad_response,
    _bad_response,
)


def request_parser(limits: Limits) -> MessageParser:
    """A client connection's parser: one for the connection's whole life."""
    return MessageParser(limits, _REQUEST)


def response_parser(limits: Limits, upstream: str) -> MessageParser:
    """Parses an upstream connection's responses (and any 1xx interim ones before each);
    `upstream` names it in 502 texts."""
    return MessageParser(limits, _RESPONSE, upstream)
