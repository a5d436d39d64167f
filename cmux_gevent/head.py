"""Message heads: the parsed types, hop-by-hop filtering, framing, serialisation.

Pure functions over byte strings. Heads sent on are always rebuilt from the
parsed fields, never copied from the peer's raw bytes, so only well-formed heads
ever reach a dev server or a browser.
"""

import re
from typing import FrozenSet, List, Optional, Tuple

from .errors import ClientError

Header = Tuple[bytes, bytes]

#: RFC 9110 7.6.1 connection-specific fields, plus the de-facto Proxy-Connection.
HOP_BY_HOP: FrozenSet[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
    }
)

#: The routing headers are for the proxy alone and never forwarded.
PORT_HEADER = b"x-cmux-port-internal"
WORKSPACE_HEADER = b"x-cmux-workspace-internal"
ROUTING_HEADERS: FrozenSet[bytes] = frozenset({PORT_HEADER, WORKSPACE_HEADER})

# Framing kinds: how a body's end is known.
NONE = "none"  # no body at all
LENGTH = "length"  # Content-Length bytes
CHUNKED = "chunked"  # chunked transfer coding, ends with a zero chunk
CLOSE = "close"  # read until the peer closes (responses only)


def tokens(value: Optional[bytes]) -> List[bytes]:
    """Comma-separated tokens of a header value, lowercased ("keep-alive, Upgrade")."""
    if not value:
        return []
    return [t for t in map(bytes.strip, value.lower().split(b",")) if t]


class Head:
    """A request or response head as llhttp parsed it; `headers` keeps order, case and
    duplicates, `names` holds their lowercase names beside them for lookups.

    Head(first, text, version, headers, keep_alive, upgrade): the start line's two
    fields are the slots `_first` and `_text`, read as `method` and `target` on a
    request and as `status` (an int) and `reason` on a response. Requests and
    responses share one class on purpose: CPython 3.11 caches an attribute lookup
    for one type per call site, so code that handles both kinds (filtering,
    framing) ran its lookups uncached while two head types alternated.
    """

    __slots__ = ("_first", "_text", "version", "headers", "names", "keep_alive", "upgrade")

    def __init__(self, first, text, version: str, headers: List[Header], keep_alive, upgrade):
        self._first = first
        self._text = text
        self.version = version
        self.headers = headers
        self.names = [name.lower() for name, _ in headers]
        self.keep_alive = keep_alive
        self.upgrade = upgrade

    def get(self, lower_name: bytes) -> Optional[bytes]:
        """The first value of a header, by lowercase name."""
        names = self.names
        if lower_name in names:  # list scans run in C: cheaper than building a dict
            return self.headers[names.index(lower_name)][1]
        return None

    def get_all(self, lower_name: bytes) -> List[bytes]:
        if lower_name not in self.names:
            return []
        return [pair[1] for pair, name in zip(self.headers, self.names) if name == lower_name]


# The start line's fields by their names: aliases of the slot descriptors (which exist only
# once the class does), as fast as any attribute.
Head.method = Head.status = Head._first  # a request's method (bytes), a response's status (int)
Head.target = Head.reason = Head._text  # a request's target, a response's reason phrase (bytes)


def check_request(head: Head) -> None:
    """Refuse what llhttp tolerates but a proxy in front of dev servers must not.

    llhttp already rejects bare LF, CL with TE, differing Content-Lengths, bad
    chunk sizes, control characters in values and space before the colon.
    """
    if head.version not in ("1.1", "1.0"):
        raise ClientError(400, f"bad request: unsupported HTTP version {head.version}")
    if b"transfer-encoding" in head.names and not _chunked_only(head):
        raise ClientError(400, "bad request: Transfer-Encoding other than chunked")
    if head.names.count(b"host") > 1:  # RFC 9112 3.2: which one routes is ambiguous
        raise ClientError(400, "bad request: more than one Host header")
    target = head.target
    if head.method == b"CONNECT":
        return
    if target.startswith(b"/") or (target == b"*" and head.method == b"OPTIONS"):
        return
    if target[:7].lower() == b"http://":  # route.py accepts it only if it names this proxy
        return
    raise ClientError(400, "bad request: request target must be a path")


_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def response_problem(head: Head) -> Optional[str]:
    """Why an upstream response head must not be relayed, or None (llhttp checked the rest).

    Only HTTP/1.x, a reason phrase of visible characters, and Transfer-Encoding
    exactly `chunked` (like nginx: any other coding is an unknowable body end).
    """
    if head.version not in ("1.1", "1.0"):
        return f"unsupported HTTP version {head.version}"
    if not head.reason.isalpha() and _CONTROL.search(head.reason):  # "OK" needs no regex
        return "control character in reason phrase"
    if b"transfer-encoding" in head.names and not _chunked_only(head):
        return "Transfer-Encoding other than chunked"
    return None


def _chunked_only(head: Head) -> bool:
    """Exactly one Transfer-Encoding, exactly `chunked`."""
    encodings = head.get_all(b"transfer-encoding")
    return len(encodings) == 1 and encodings[0].lower() == b"chunked"


def request_framing(head: Head) -> Tuple[str, int]:
    """How the request body ends, from the headers llhttp validated."""
    return _framing_by_fields(head, NONE)


def response_framing(method: bytes, head: Head) -> Tuple[str, int]:
    """How a response body ends (RFC 9112 6.3), given the request's method."""
    status = head.status
    if method == b"HEAD" or status < 200 or status in (204, 304):
        return NONE, 0
    return _framing_by_fields(head, CLOSE)


def _framing_by_fields(head: Head, without_length: str) -> Tuple[str, int]:
    """Framing from Transfer-Encoding (only `chunked` gets this far) or Content-Length;
    `without_length` when neither is there (NONE for requests, CLOSE for responses)."""
    names = head.names
    if b"transfer-encoding" in names:
        return CHUNKED, 0
    if b"content-length" not in names:
        return without_length, 0
    length = int(head.headers[names.index(b"content-length")][1])
    return (LENGTH, length) if length else (NONE, 0)


_ALWAYS_DROPPED = HOP_BY_HOP | ROUTING_HEADERS


def end_to_end(head: Head, keep: FrozenSet[bytes] = frozenset()) -> List[bytes]:
    """The head's header lines (`Name: value`, as received) without hop-by-hop fields, the
    fields Connection names, and routing fields.

    Names in `keep` (lowercase) survive even if hop-by-hop (Upgrade, for upgrades).
    Lines are joined with `b": ".join`: %-formatting each pair costs a third more.
    """
    names = head.names
    dropped = _ALWAYS_DROPPED
    if b"connection" in names:
        dropped = _dropped_with_connection(head)
    if keep:
        dropped = dropped - keep
    return [b": ".join(pair) for pair, name in zip(head.headers, names) if name not in dropped]


_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b"upgrade"})


def _dropped_with_connection(head: Head) -> FrozenSet[bytes]:
    """The names to drop when Connection is present: it names hop-by-hop fields too."""
    names = head.names
    plain = names.count(b"connection") == 1 and (
        head.headers[names.index(b"connection")][1].lower() in _PLAIN_CONNECTION
    )
    if plain:  # the usual Connection field: it names nothing else
        return _ALWAYS_DROPPED
    named = [t for value in head.get_all(b"connection") for t in tokens(value)]
    return _ALWAYS_DROPPED.union(named)


def _head_bytes(start_line: bytes, lines: List[bytes], extra: List[bytes]) -> bytes:
    return b"\r\n".join([start_line, *lines, *extra, b"\r\n"])  # the last one ends the head


def serialize_request(
    head: Head, lines: List[bytes], framing: str, connection: Optional[bytes] = None
) -> bytes:
    """The head sent upstream: always HTTP/1.1, keep-alive unless `connection` says otherwise.

    `lines` are header lines as `end_to_end` gives them.
    """
    extra = []
    if framing == CHUNKED:
        extra.append(b"Transfer-Encoding: chunked")
    if connection:
        extra.append(b"Connection: " + connection)
    return _head_bytes(b"%s %s HTTP/1.1" % (head.method, head.target), lines, extra)


def serialize_response(head: Head, lines: List[bytes], extra: List[bytes]) -> bytes:
    """The head sent to the client: upstream status and reason, header lines, then ours."""
    return _head_bytes(b"HTTP/1.1 %d %s" % (head.status, head.reason), lines, extra)
