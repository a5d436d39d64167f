"""parser.py fed raw messages in every chunking: one piece, byte by byte, random splits.

Whatever the split, the events must be the same (body pieces are compared joined,
since their boundaries follow the reads). Errors, too, must not depend on how the
bytes arrived: a limit that only holds for some chunkings is not a limit.
"""

import random

import pytest

from cmux_gevent.errors import ClientError, UpstreamError
from cmux_gevent.head import Head
from cmux_gevent.parser import END, Limits, request_parser, response_parser

BODY = "body"  # how `normalise` labels a body piece (the parser queues bare bytes)

REQUESTS = {
    "simple": b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n",
    "http10": b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
    "length-body": b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world",
    "chunked-trailers": (
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    ),
    "pipelined": (
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
        b"HEAD /3 HTTP/1.1\r\nConnection: close\r\n\r\n"
    ),
    "duplicates-and-case": (
        b"GET / HTTP/1.1\r\nX-A: 1\r\nx-a: 2\r\nCookie: c=1\r\nCookie: d=2\r\nHOST: X\r\n\r\n"
    ),
    "empty-value": b"GET / HTTP/1.1\r\nX-Empty:\r\nX-Spaces:   \r\n\r\n",
    "options-star": b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
}


def normalise(events):
    """Events as comparable tuples, adjacent body pieces joined."""
    out = []
    for event in events:
        if isinstance(event, Head) and isinstance(event.method, bytes):  # a request
            out.append(
                (
                    "request",
                    event.method,
                    event.target,
                    event.version,
                    tuple(event.headers),
                    event.keep_alive,
                    event.upgrade,
                )
            )
        elif isinstance(event, Head):  # a response: its first field is the int status
            out.append(
                (
                    "response",
                    event.status,
                    event.reason,
                    event.version,
                    tuple(event.headers),
                    event.keep_alive,
                )
            )
        elif event is END:
            out.append(END)
        else:
            assert type(event) is bytes
            if out and out[-1][0] == BODY:
                out[-1] = (BODY, out[-1][1] + event)
            else:
                out.append((BODY, event))
    return out


def splits(data, seed):
    """`data` cut at random points (seeded, so a failure names its chunking)."""
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 12))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


def chunkings(data):
    yield "whole", [data]
    yield "bytewise", [data[i : i + 1] for i in range(len(data))]
    for seed in range(8):
        yield f"random{seed}", splits(data, seed)


def feed_all(parser, pieces):
    for piece in pieces:
        parser.feed(piece)
    return parser


def request_events(pieces, limits=None):
    return normalise(feed_all(request_parser(limits or Limits()), pieces).events)


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_same_events_in_every_chunking(name):
    data = REQUESTS[name]
    expected = request_events([data])
    for label, pieces in chunkings(data):
        assert request_events(pieces) == expected, label


def test_simple_head_fields():
    (head, end) = request_events([REQUESTS["simple"]])
    assert head == ("request", b"GET", b"/a?b=c", "1.1", ((b"Host", b"x"),), True, False)
    assert end is END


def test_http10_is_not_keep_alive():
    assert request_events([REQUESTS["http10"]])[0][5] is False


def test_chunked_body_joined_and_trailers_dropped():
    head, body, end = request_events([REQUESTS["chunked-trailers"]])
    assert head[4] == ((b"Transfer-Encoding", b"chunked"),)
    assert body == (BODY, b"hello world") and end is END


def test_pipelined_requests_queue_in_order():
    events = request_events([REQUESTS["pipelined"]])
    assert [e[2] for e in events if e is not END and e[0] == "request"] == [b"/1", b"/2", b"/3"]
    assert (BODY, b"abc") in events
    assert events[-2][5] is False  # Connection: close on the third


def test_duplicates_order_and_case_kept():
    head = request_events([REQUESTS["duplicates-and-case"]])[0]
    assert head[4] == (
        (b"X-A", b"1"),
        (b"x-a", b"2"),
        (b"Cookie", b"c=1"),
        (b"Cookie", b"d=2"),
        (b"HOST", b"X"),
    )


UPGRADE = b"GET /ws HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n"


@pytest.mark.parametrize(
    "method_line", [UPGRADE, b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: a\r\n\r\n"]
)
def test_upgrade_keeps_the_bytes_after_the_head(method_line):
    raw = b"\x81\x05hello-raw-bytes"
    for cut in range(len(method_line), len(method_line) + len(raw) + 1):
        parser = request_parser(Limits())
        data = method_line + raw
        parser.feed(data[:cut])  # the piece holding the head's end, as a read returns it
        assert parser.upgraded_rest == data[len(method_line) : cut]
        assert parser.events[0].upgrade is True


def test_upgrade_head_split_anywhere_still_upgrades():
    for label, pieces in chunkings(UPGRADE):
        parser = feed_all(request_parser(Limits()), pieces)
        assert parser.events[0].upgrade and parser.upgraded_rest == b"", label


def errors_in_every_chunking(data, limits=None):
    """The (type, status, reason) raised for `data`, the same whatever the chunking."""
    seen = set()
    for label, pieces in chunkings(data):
        try:
            feed_all(request_parser(limits or Limits()), pieces)
        except ClientError as exc:
            seen.add((exc.status, exc.reason))
        else:
            seen.add(("accepted", label))
    assert len(seen) == 1, seen
    return seen.pop()


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"GET / HTTP/1.1\nHost: a\n\n", "bad request: "),  # bare LF
        (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "bad request: "),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "bad request",
        ),
        (b"GET / HTTP/1.1\r\nBad Name: 1\r\n\r\n", "bad request: "),
        (b"GET / HTTP/1.1\r\nName : 1\r\n\r\n", "bad request: "),
        (b"GET / HTTP/1.1\r\nA: b\x01c\r\n\r\n", "bad request: "),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad request: "),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "bad",
        ),
        (b"GET a/b HTTP/1.1\r\n\r\n", "bad request: "),
    ],
)
def test_malformed_requests_are_400_in_every_chunking(data, reason):
    status, text = errors_in_every_chunking(data)
    assert status == 400 and text.startswith(reason)


def test_long_target_is_414():
    data = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n"
    assert errors_in_every_chunking(data) == (414, "request line too long")


def test_too_many_headers_is_431():
    data = b"GET / HTTP/1.1\r\n" + b"A: b\r\n" * 101 + b"\r\n"
    assert errors_in_every_chunking(data) == (431, "too many header fields")
    ok = b"GET / HTTP/1.1\r\n" + b"A: b\r\n" * 100 + b"\r\n"
    assert len(request_events([ok])[0][4]) == 100


@pytest.mark.parametrize("size", [70_000, 65_536 + 200, 200_000])
def test_large_head_is_431_in_every_chunking(size):
    data = b"GET / HTTP/1.1\r\nA: " + b"b" * size + b"\r\n\r\n"
    assert errors_in_every_chunking(data) == (431, "request header fields too large")


def test_head_limit_is_configurable():
    data = b"GET / HTTP/1.1\r\nA: " + b"b" * 300 + b"\r\n\r\n"
    small = Limits(max_head_bytes=256)
    assert errors_in_every_chunking(data, small) == (431, "request header fields too large")
    assert request_events([data])[0][4] == ((b"A", b"b" * 300),)


def test_body_bytes_do_not_count_against_the_head_limit():
    body = b"x" * 200_000
    data = b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    for label, pieces in [
        ("whole", [data]),
        ("64k", [data[i : i + 65536] for i in range(0, len(data), 65536)]),
    ]:
        assert request_events(pieces)[1] == (BODY, body), label


def response_events(pieces):
    return normalise(feed_all(response_parser(Limits(), "127.0.0.1:9"), pieces).events)


def test_interim_response_then_final():
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    expected = [
        ("response", 100, b"Continue", "1.1", (), True),
        END,
        ("response", 200, b"OK", "1.1", ((b"Content-Length", b"2"),), True),
        (BODY, b"hi"),
        END,
    ]
    for label, pieces in chunkings(data):
        assert response_events(pieces) == expected, label


def test_until_close_response_has_no_end_yet():
    events = response_events([b"HTTP/1.0 200 OK\r\n\r\nsome body"])
    assert events == [("response", 200, b"OK", "1.0", (), False), (BODY, b"some body")]


def test_101_keeps_the_bytes_after_the_head():
    parser = response_parser(Limits(), "u:1")
    parser.feed(b"HTTP/1.1 101 Switching\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\nframes")
    assert parser.events[0].status == 101 and parser.upgraded_rest == b"frames"


@pytest.mark.parametrize(
    "data", [b"HTTP/1.1 xx\r\n\r\n", b"garbage garbage\r\n\r\n", b"\x16\x03\x01\x02"]
)
def test_malformed_response_is_502_naming_the_upstream(data):
    with pytest.raises(UpstreamError) as info:
        response_parser(Limits(), "127.18.0.9:3000").feed(data)
    assert info.value.status == 502
    assert info.value.reason.startswith(
        "upstream request error: malformed response from 127.18.0.9:3000"
    )


CONNECTION_FIELDS = [
    b"",
    b"Connection: keep-alive\r\n",
    b"Proxy-Connection: keep-alive\r\n",
    b"Connection: close\r\n",
    b"Keep-Alive: 5\r\n",
]


@pytest.mark.parametrize("field", CONNECTION_FIELDS)
@pytest.mark.parametrize("version", ["0.9", "1.0", "1.1", "2.0"])
def test_the_version_is_the_one_on_the_start_line(version, field):
    """The parser reads the version only when llhttp's keep-alive does not already say
    1.1; whichever way it knows, the head must carry the version the peer wrote."""
    request = request_parser(Limits())
    request.feed(b"GET / HTTP/%s\r\n%s\r\n" % (version.encode(), field))
    assert request.events[0].version == version
    response = response_parser(Limits(), "u:1")
    try:
        response.feed(b"HTTP/%s 200 OK\r\nContent-Length: 0\r\n%s\r\n" % (version.encode(), field))
    except UpstreamError as error:  # only 1.0 and 1.1 responses are relayed
        assert version not in ("1.0", "1.1") and f"version {version}" in error.reason
    else:
        assert response.events[0].version == version


@pytest.mark.parametrize("version", ["0.0", "1.2", "1.9", "2.1", "3.0", "9.9"])
def test_versions_llhttp_does_not_know_are_refused(version):
    """The shortcut above relies on llhttp refusing every other version."""
    with pytest.raises(ClientError) as info:
        request_parser(Limits()).feed(b"GET / HTTP/%s\r\nHost: x\r\n\r\n" % version.encode())
    assert info.value.status == 400


def test_requests_and_responses_share_one_head_class_and_one_parser_class():
    """A performance guard: CPython 3.11 caches attribute lookups for one type per call
    site, so a subclass per kind makes every shared callback and head function run
    uncached while requests and responses alternate (+10 k instructions per request)."""
    request = request_parser(Limits())
    response = response_parser(Limits(), "u:1")
    assert type(request) is type(response)
    request.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    response.feed(b"HTTP/1.1 204 No Content\r\n\r\n")
    (request_head, _), (response_head, _) = request.events, response.events
    assert type(request_head) is type(response_head)
    assert (request_head.method, request_head.target) == (b"GET", b"/a")
    assert (response_head.status, response_head.reason) == (204, b"No Content")
