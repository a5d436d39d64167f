"""head.py and errors.py over byte strings: tokens, hop-by-hop, framing, serialisation."""

import pytest

from cmux_gevent import head as h
from cmux_gevent.errors import ClientError, UpstreamError, render_error, status_line
from cmux_gevent.parser import Limits, request_parser, response_parser


def request(raw: bytes) -> h.Head:
    parser = request_parser(Limits())
    parser.feed(raw)
    return parser.events[0]


def response(raw: bytes) -> h.Head:
    parser = response_parser(Limits(), "u:1")
    parser.feed(raw)
    return parser.events[0]


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, []),
        (b"", []),
        (b"close", [b"close"]),
        (b"keep-alive, Upgrade", [b"keep-alive", b"upgrade"]),
        (b" ,UPGRADE,, x-a ,", [b"upgrade", b"x-a"]),
    ],
)
def test_tokens(value, expected):
    assert h.tokens(value) == expected


def test_get_is_case_insensitive_first_value_get_all_keeps_order():
    head = request(b"GET / HTTP/1.1\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
    assert head.get(b"x-a") == b"1" and head.get(b"x-b") is None
    assert head.get_all(b"x-a") == [b"1", b"2"]


HOP = request(
    b"GET / HTTP/1.1\r\n"
    b"Connection: keep-alive, X-Named, Upgrade\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
    b"Trailer: X-T\r\nTransfer-Encoding: chunked\r\nProxy-Connection: keep-alive\r\n"
    b"Proxy-Authenticate: Basic\r\nProxy-Authorization: Basic eA==\r\nUpgrade: websocket\r\n"
    b"x-named: dropped because Connection names it\r\n"
    b"X-Cmux-Port-Internal: 3000\r\nx-cmux-workspace-internal: workspace-1\r\n\r\n"
).headers
END_TO_END = [(b"Set-Cookie", b"a=1"), (b"host", b"h"), (b"Set-Cookie", b"b=2"), (b"X-Keep", b"k")]


def _head(headers):
    return h.Head(b"GET", b"/", "1.1", headers, True, False)


def test_end_to_end_drops_hop_by_hop_named_and_routing_keeps_the_rest_in_order():
    mixed = [END_TO_END[0], *HOP[:6], END_TO_END[1], *HOP[6:], *END_TO_END[2:]]
    assert h.end_to_end(_head(mixed)) == [b": ".join(pair) for pair in END_TO_END]


def test_end_to_end_keep_lets_upgrade_through():
    kept = h.end_to_end(_head(HOP + END_TO_END), keep=frozenset({b"upgrade"}))
    assert kept == [b"Upgrade: websocket", *(b": ".join(pair) for pair in END_TO_END)]


@pytest.mark.parametrize("value", [b"keep-alive", b"Close", b"Upgrade", b"keep-alive, X-A"])
def test_end_to_end_with_one_connection_field(value):
    """A plain keep-alive/close/upgrade skips splitting tokens; anything else is split."""
    head = request(
        b"GET / HTTP/1.1\r\nConnection: %s\r\nKeep-Alive: 5\r\nX-A: 1\r\nX-C: 3\r\n\r\n" % value
    )
    named = b"X-A" in value
    assert h.end_to_end(head) == ([] if named else [b"X-A: 1"]) + [b"X-C: 3"]


def test_end_to_end_every_connection_header_counts():
    head = request(
        b"GET / HTTP/1.1\r\nConnection: X-A\r\nconnection: x-b\r\n"
        b"X-A: 1\r\nX-B: 2\r\nX-C: 3\r\n\r\n"
    )
    assert h.end_to_end(head) == [b"X-C: 3"]


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /x HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\n\r\n",
        b"CONNECT 127.0.0.1:443 HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n",
    ],
)
def test_check_request_accepts(raw):
    h.check_request(request(raw))


@pytest.mark.parametrize(
    "raw, framing",
    [
        (b"GET / HTTP/1.1\r\n\r\n", (h.NONE, 0)),
        (b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", (h.NONE, 0)),
        (b"POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n", (h.LENGTH, 12)),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", (h.CHUNKED, 0)),
    ],
)
def test_request_framing(raw, framing):
    assert h.request_framing(request(raw)) == framing


@pytest.mark.parametrize(
    "method, raw, framing",
    [
        (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", (h.LENGTH, 5)),
        (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", (h.NONE, 0)),
        (b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", (h.CHUNKED, 0)),
        (b"GET", b"HTTP/1.0 200 OK\r\n\r\n", (h.CLOSE, 0)),
        (b"GET", b"HTTP/1.1 200 OK\r\n\r\n", (h.CLOSE, 0)),
        (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", (h.NONE, 0)),
        (b"HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", (h.NONE, 0)),
        (b"GET", b"HTTP/1.1 204 No Content\r\n\r\n", (h.NONE, 0)),
        (b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n", (h.NONE, 0)),
        (b"GET", b"HTTP/1.1 100 Continue\r\n\r\n", (h.NONE, 0)),
        (b"GET", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", (h.NONE, 0)),
        (b"POST", b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n", (h.LENGTH, 2)),
    ],
)
def test_response_framing(method, raw, framing):
    assert h.response_framing(method, response(raw)) == framing


def checked_request(raw: bytes) -> None:
    h.check_request(request(raw))


def bad(reason: str) -> ClientError:
    return ClientError(400, "bad request: " + reason)


def malformed(problem: str) -> UpstreamError:
    return UpstreamError("upstream request error: malformed response from u:1: " + problem)


OTHER_TE = "Transfer-Encoding other than chunked"


@pytest.mark.parametrize(
    "read, raw, expected",
    [
        (checked_request, b"GET / HTTP/2.0\r\n\r\n", bad("unsupported HTTP version 2.0")),
        (checked_request, b"GET / HTTP/0.9\r\n\r\n", bad("unsupported HTTP version 0.9")),
        (
            checked_request,
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            bad(OTHER_TE),
        ),
        (
            checked_request,
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            bad("more than one Host header"),
        ),
        (checked_request, b"GET https://a/ HTTP/1.1\r\n\r\n", bad("request target must be a path")),
        (checked_request, b"GET * HTTP/1.1\r\n\r\n", bad("request target must be a path")),
        # Responses whose body end is unknowable are the upstream's fault: 502.
        (response, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", malformed(OTHER_TE)),
        (
            response,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            malformed(OTHER_TE),
        ),
        (response, b"HTTP/2.0 200 OK\r\n\r\n", malformed("unsupported HTTP version 2.0")),
    ],
)
def test_refused_heads_say_why(read, raw, expected):
    with pytest.raises(type(expected)) as info:
        read(raw)
    assert (info.value.status, info.value.reason) == (expected.status, expected.reason)


def test_serialize_request_is_http11_with_our_framing():
    head = request(b"GET /a?b HTTP/1.0\r\nHost: h\r\nConnection: close\r\n\r\n")
    out = h.serialize_request(head, h.end_to_end(head), h.NONE)
    assert out == b"GET /a?b HTTP/1.1\r\nHost: h\r\n\r\n"
    head = request(b"POST /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX: 1\r\n\r\n")
    out = h.serialize_request(head, h.end_to_end(head), h.CHUNKED)
    assert out == b"POST /u HTTP/1.1\r\nX: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
    out = h.serialize_request(head, [b"X: 1"], h.NONE, connection=b"Upgrade")
    assert out == b"POST /u HTTP/1.1\r\nX: 1\r\nConnection: Upgrade\r\n\r\n"


def test_serialize_request_round_trips_through_the_parser():
    raw = b"PATCH /p%20q?x=1&x=2 HTTP/1.1\r\nHost: a:1\r\nset-cookie: a\r\nSet-Cookie: b\r\n\r\n"
    head = request(raw)
    again = request(h.serialize_request(head, h.end_to_end(head), h.NONE))
    assert (again.method, again.target, again.headers) == (head.method, head.target, head.headers)


def test_serialize_response_keeps_status_reason_and_adds_extra_last():
    head = response(b"HTTP/1.0 418 I'm a teapot\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
    out = h.serialize_response(head, h.end_to_end(head), [b"Connection: close"])
    assert out == b"HTTP/1.1 418 I'm a teapot\r\nX-A: 1\r\nx-a: 2\r\nConnection: close\r\n\r\n"


def test_render_error_is_complete_plain_text_and_closes():
    out = render_error(ClientError(400, "missing required header: X-Cmux-Port-Internal"))
    head, _, body = out.partition(b"\r\n\r\n")
    assert body == b"missing required header: X-Cmux-Port-Internal"
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 400 Bad Request"
    assert b"Content-Type: text/plain; charset=utf-8" in lines
    assert b"Content-Length: %d" % len(body) in lines and b"Connection: close" in lines


def test_render_error_extra_headers_and_utf8_length():
    out = render_error(ClientError(403, "port 22 blocked — policy", [(b"X-Cmux-Error", b"x")]))
    head, _, body = out.partition(b"\r\n\r\n")
    assert body.decode() == "port 22 blocked — policy"
    assert b"Content-Length: %d" % len(body) in head and b"X-Cmux-Error: x" in head


def test_status_lines():
    assert status_line(502) == b"HTTP/1.1 502 Bad Gateway\r\n"
    assert status_line(508) == b"HTTP/1.1 508 Loop Detected\r\n"
    assert status_line(599) == b"HTTP/1.1 599 Error\r\n"
    assert UpstreamError("x").status == 502 and UpstreamError("x", status=504).status == 504
