"""Plain HTTP through a real daemon: headers, framing, streaming, keep-alive, errors.

Clients are raw sockets (`Wire`) wherever framing matters: a wrong byte count
shows up as the next response failing to parse. Upstreams are real threaded
servers in this process; one module-wide app answers by path, the odd ones
(HTTP/1.0-style, truncating, garbage) get their own servers.
"""

import functools
import hashlib
import os
import threading

import pytest
import requests
from integration.upstreams import (
    Upstream,
    Wire,
    answers,
    describe,
    described,
    echo_http,
    http_server,
    response,
    routed,
    send_routed,
)

BIG = 50 * 1024 * 1024


def _app(req, wire, upstream):
    path = req.start[1]
    if path == "/hop":
        hop = [
            ("Connection", "keep-alive, X-Secret"),
            ("Keep-Alive", "timeout=5"),
            ("X-Secret", "hidden"),
            ("Proxy-Connection", "keep-alive"),
            ("Trailer", "X-T"),
            ("Upgrade", "h2c"),
            ("TE", "trailers"),
            ("X-Public", "seen"),
        ]
        wire.send(response(200, hop, b"ok"))
    elif path == "/cookies":
        headers = [("set-cookie", "a=1"), ("X-Mixed-Case", "v"), ("Set-Cookie", "b=2; Path=/")]
        wire.send(response(200, headers, b"c"))
    elif path == "/head":
        wire.send(response(200, [("Content-Length", "1234")]))  # a HEAD answer: no body
    elif path in ("/204", "/304"):
        wire.send(f"HTTP/1.1 {path[1:]} X\r\nETag: e\r\n\r\n".encode())
    elif path == "/chunked":
        wire.send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
    elif path == "/big":
        body, sha = big_body()
        wire.send(response(200, [("X-Sha256", sha)], body))
    else:
        describe(req, wire, upstream)


@functools.lru_cache(maxsize=1)
def big_body():
    """50 MB of random bytes and their sha256, made once, only if a test asks."""
    body = os.urandom(BIG)
    return body, hashlib.sha256(body).hexdigest()


@pytest.fixture(scope="module")
def app():
    with Upstream(http_server(_app), name="app") as up:
        yield up


def one(proxy, app, path, headers=(), method="GET", version="HTTP/1.1", body=b""):
    wire = send_routed(proxy, method, path, app.port, headers, body, version)
    return wire, wire.read_response(method)


@pytest.mark.timeout(20)
def test_hop_by_hop_request_headers_stripped(proxy, app):
    headers = [
        ("Connection", "keep-alive, X-Drop-Me"),
        ("X-Drop-Me", "1"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Trailer", "X-T"),
        ("Proxy-Connection", "keep-alive"),
        ("Upgrade", "h2c"),
        ("X-Keep", "yes"),
    ]
    _, msg = one(proxy, app, "/echo", headers)
    seen = {n.lower() for n, _ in described(msg)["headers"]}
    assert "x-keep" in seen
    gone = {"connection", "x-drop-me", "keep-alive", "te", "trailer", "proxy-connection", "upgrade"}
    assert not gone & seen, gone & seen


@pytest.mark.timeout(20)
def test_hop_by_hop_response_headers_stripped(proxy, app):
    _, msg = one(proxy, app, "/hop")
    names = {n.lower() for n in msg.names()}
    assert msg.body == b"ok" and msg.get("x-public") == "seen"
    gone = {"x-secret", "keep-alive", "proxy-connection", "trailer", "upgrade", "te"}
    assert not gone & names, gone & names
    assert msg.get("connection") in (None, "keep-alive")


@pytest.mark.timeout(20)
def test_request_line_forwarded_byte_for_byte_and_host_unchanged(proxy, app):
    target = "/p/a%20th/..//x;m=1?q=1&q=%2f&empty=&plus=a+b&u=%E2%9C%93"
    wire = Wire.connect(proxy.port)
    wire.send(
        f"PURGE {target} HTTP/1.1\r\nHost: Example.Test:8443\r\n"
        f"X-Cmux-Port-Internal: {app.port}\r\nContent-Length: 0\r\n\r\n".encode()
    )
    seen = described(wire.read_response("PURGE"))
    assert (seen["method"], seen["target"], seen["version"]) == ("PURGE", target, "HTTP/1.1")
    assert ["Host", "Example.Test:8443"] in seen["headers"]


@pytest.mark.timeout(20)
def test_duplicate_headers_order_and_case_kept_both_ways(proxy, app):
    headers = [
        ("X-Dup", "1"),
        ("x-other", "o"),
        ("x-dup", "2"),
        ("Cookie", "a=1"),
        ("Cookie", "b=2"),
    ]
    _, msg = one(proxy, app, "/echo", headers)
    seen = [
        tuple(h)
        for h in described(msg)["headers"]
        if h[0].lower() in ("x-dup", "x-other", "cookie")
    ]
    assert seen == headers
    _, msg = one(proxy, app, "/cookies")
    lines = [(n, v) for n, v in zip(msg.names(), [v.decode() for _, v in msg.headers])]
    assert [h for h in lines if h[0].lower() in ("set-cookie", "x-mixed-case")] == [
        ("set-cookie", "a=1"),
        ("X-Mixed-Case", "v"),
        ("Set-Cookie", "b=2; Path=/"),
    ]


@pytest.mark.timeout(20)
def test_streaming_upload_reaches_upstream_before_the_body_ends(proxy):
    first_chunk = threading.Event()

    def slow_reader(wire, upstream):
        wire.read_head()
        assert wire.read_chunk() == b"chunk-one"
        first_chunk.set()
        rest = wire.read_chunked()
        wire.send(response(200, [], b"got:" + rest))

    with Upstream(slow_reader) as up:
        wire = send_routed(proxy, "POST", "/up", up.port, [("Transfer-Encoding", "chunked")])
        wire.send(b"9\r\nchunk-one\r\n")
        assert first_chunk.wait(5), "upstream never saw chunk 1 while the client held chunk 2"
        wire.send(b"9\r\nchunk-two\r\n0\r\n\r\n")
        assert wire.read_response().body == b"got:chunk-two"


@pytest.mark.timeout(20)
def test_sse_events_arrive_one_by_one(proxy):
    acks = [threading.Event() for _ in range(3)]

    def sse(wire, upstream):
        wire.read_request()
        wire.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for n, ack in enumerate(acks):
            event = f"data: {n}\n\n".encode()
            wire.send(b"%x\r\n%s\r\n" % (len(event), event))
            assert ack.wait(5)  # the stream stays open until the client has this event
        wire.send(b"0\r\n\r\n")

    with Upstream(sse) as up:
        wire = send_routed(proxy, "GET", "/events", up.port, [("Accept", "text/event-stream")])
        msg = wire.read_head()
        assert msg.get("content-type") == "text/event-stream"
        for n, ack in enumerate(acks):
            got = b""
            while not got.endswith(b"\n\n"):
                got += wire.read_chunk()
            assert got == f"data: {n}\n\n".encode()
            ack.set()
        assert wire.read_chunk() == b""


@pytest.mark.timeout(60)
def test_50mb_upload_and_download_sha256(proxy, app):
    body, sha = big_body()
    resp = requests.post(
        proxy.url + "/upload",
        data=body,
        headers={"X-Cmux-Port-Internal": str(app.port)},
        timeout=30,
    )
    seen = resp.json()
    assert (seen["body_len"], seen["body_sha256"]) == (BIG, sha)
    resp = requests.get(
        proxy.url + "/big", headers={"X-Cmux-Port-Internal": str(app.port)}, timeout=30
    )
    assert len(resp.content) == BIG
    assert hashlib.sha256(resp.content).hexdigest() == resp.headers["X-Sha256"] == sha


@pytest.mark.timeout(30)
def test_keepalive_100_requests_on_one_connection_few_upstream_connections(proxy):
    with Upstream(echo_http) as up:
        wire = Wire.connect(proxy.port)
        for n in range(100):
            wire.send(routed("GET", f"/n/{n}", up.port))
            assert described(wire.read_response())["target"] == f"/n/{n}"
        assert up.accepted <= 2, f"upstream saw {up.accepted} connections for 100 requests"
        assert len(up.requests) == 100


@pytest.mark.timeout(20)
def test_pipelined_requests_answered_in_order(proxy, app):
    wire = Wire.connect(proxy.port)
    wire.send(
        routed("GET", "/p/1", app.port)
        + routed("POST", "/p/2", app.port, [("Content-Length", "5")], b"hello")
        + routed("GET", "/p/3", app.port)
    )
    first, second, third = (described(wire.read_response()) for _ in range(3))
    assert [first["target"], second["target"], third["target"]] == ["/p/1", "/p/2", "/p/3"]
    assert second["body_len"] == 5


@pytest.mark.timeout(20)
def test_expect_100_continue_client_waits_for_100(proxy, app):
    wire = Wire.connect(proxy.port)
    wire.send(
        routed("PUT", "/put", app.port, [("Expect", "100-continue"), ("Content-Length", "4")])
    )
    interim = wire.read_response()
    assert interim.status == 100
    wire.send(b"data")
    seen = described(wire.read_response())
    assert seen["body_len"] == 4 and seen["method"] == "PUT"


@pytest.mark.timeout(20)
def test_head_204_304_have_no_body_and_next_pipelined_response_parses(proxy, app):
    wire = Wire.connect(proxy.port)
    wire.send(
        routed("HEAD", "/head", app.port)
        + routed("GET", "/204", app.port)
        + routed("GET", "/304", app.port)
        + routed("GET", "/after", app.port)
    )
    head = wire.read_response("HEAD")
    assert head.status == 200 and head.get("content-length") == "1234"
    assert [wire.read_response().status for _ in range(2)] == [204, 304]
    assert described(wire.read_response())["target"] == "/after"


# An HTTP/1.0-style upstream: no Content-Length, the body ends when it closes.
_http10_upstream = answers(
    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"until-close " * 1000
)


@pytest.mark.timeout(20)
def test_read_until_close_upstream_reaches_http11_client_chunked(proxy):
    with Upstream(_http10_upstream) as up:
        wire = send_routed(proxy, "GET", "/", up.port)
        msg = wire.read_response()
        assert msg.get("transfer-encoding") == "chunked"
        assert msg.body == b"until-close " * 1000
        wire.send(routed("GET", "/again", up.port))  # framing was right: the connection lives on
        assert wire.read_response().body == b"until-close " * 1000


@pytest.mark.timeout(20)
def test_upstream_gone_mid_response_client_never_sees_complete_response(proxy):
    truncating = answers(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
    with Upstream(truncating) as up:
        wire = send_routed(proxy, "GET", "/", up.port)
        msg = wire.read_head()
        assert msg.status == 200 and msg.get("content-length") == "1000"
        assert wire.read_to_eof() == b"0123456789"  # closed before 1000 bytes


@pytest.mark.timeout(20)
def test_502_for_garbage_upstream_names_host_port(proxy):
    with Upstream(answers(b"this is not http\r\n\r\n")) as up:
        msg = send_routed(proxy, "GET", "/", up.port).read_response()
    assert msg.status == 502 and msg.get("content-type").startswith("text/plain")
    assert msg.body.startswith(b"upstream request error:")
    assert f"127.0.0.1:{up.port}".encode() in msg.body


@pytest.mark.timeout(20)
def test_502_for_refused_names_host_port(proxy):
    with Upstream(echo_http) as up:
        port = up.port
    wire = send_routed(proxy, "GET", "/", port)
    msg = wire.read_response()
    assert msg.status == 502 and msg.get("content-type").startswith("text/plain")
    assert (
        msg.body.startswith(b"upstream request error:") and f"127.0.0.1:{port}".encode() in msg.body
    )
    assert wire.at_eof()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("path", ["/echo", "/chunked", "until-close"])
def test_http10_client_gets_no_chunked_response(proxy, app, path):
    with Upstream(_http10_upstream) as closing:
        port = closing.port if path == "until-close" else app.port
        wire = send_routed(proxy, "GET", "/" + path.strip("/"), port, version="HTTP/1.0")
        msg = wire.read_response()
        assert msg.get("transfer-encoding") is None and b"HTTP/1.1" in msg.raw_head[:8]
        if msg.get("content-length") is None:
            assert msg.get("connection") == "close"  # the body ends at close; read_response read it
        expected = {"/chunked": b"abcde", "until-close": b"until-close " * 1000}.get(path)
        assert msg.body == expected if expected else described(msg)
        assert wire.at_eof()


@pytest.mark.timeout(20)
def test_http10_keep_alive_client_kept_alive_with_length(proxy, app):
    wire = Wire.connect(proxy.port)
    for n in range(3):
        wire.send(
            routed("GET", f"/k{n}", app.port, [("Connection", "keep-alive")], version="HTTP/1.0")
        )
        msg = wire.read_response()
        assert msg.get("connection") == "keep-alive" and described(msg)["target"] == f"/k{n}"


@pytest.mark.timeout(20)
def test_connection_close_honoured(proxy, app):
    wire, msg = one(proxy, app, "/echo", [("Connection", "close")])
    assert described(msg)["target"] == "/echo"
    assert msg.get("connection") == "close"
    assert wire.at_eof()
