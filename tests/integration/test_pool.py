"""The upstream keep-alive pool: reuse, a dead pooled connection retried, idle expiry."""

import time

import pytest
from conftest import wait_until
from integration.upstreams import (
    Upstream,
    Wire,
    answers,
    echo_http,
    http_server,
    response,
    routed,
)

from cmux_gevent.pool import POOL_IDLE_SECONDS


@pytest.mark.timeout(30)
def test_pooled_connection_the_upstream_closed_is_retried_on_a_fresh_one(proxy):
    # Each upstream connection answers one keep-alive response and then closes, the
    # way a dev server with a short keep-alive does: the proxy pools it, and the next
    # request finds it dead before any response byte.
    with Upstream(answers(response(200, body=b"fresh"))) as up:
        wire = Wire.connect(proxy.port)
        for _ in range(3):
            wire.send(routed("GET", "/", up.port))
            reply = wire.read_response()
            assert (reply.status, reply.body) == (200, b"fresh")
        assert up.accepted == 3, "each request needed a fresh upstream connection"


@pytest.mark.timeout(30)
def test_keepalive_requests_share_one_upstream_connection(proxy):
    with Upstream(echo_http) as up:
        wire = Wire.connect(proxy.port)
        for _ in range(20):
            wire.send(routed("GET", "/", up.port))
            assert wire.read_response().status == 200
        assert up.accepted == 1


@pytest.mark.timeout(30)
def test_idle_pooled_connection_is_closed_before_node_s_five_seconds(proxy):
    closed = []

    def serve_then_watch(wire, upstream):
        wire.read_request()
        wire.send(response(200, body=b"ok"))
        wire.sock.settimeout(10)
        answered = time.monotonic()
        assert wire.sock.recv(1) == b""  # the proxy closes its idle pooled connection
        closed.append(time.monotonic() - answered)

    with Upstream(serve_then_watch) as up:
        wire = Wire.connect(proxy.port)
        wire.send(routed("GET", "/", up.port))
        assert wire.read_response().status == 200
        assert wait_until(lambda: closed, timeout=8), "the pooled connection was never closed"
    assert POOL_IDLE_SECONDS - 0.2 <= closed[0] < 5.0, closed


def _by_path(req, wire, upstream):
    """HEAD gets a length and no body; /big a body too large for one read; others their path."""
    method, path = req.start[0], req.start[1]
    if method == "HEAD":
        wire.send(response(200, [("Content-Length", "1234")]))
    elif path == "/big":
        wire.send(response(200, body=b"b" * (3 << 20)))
    else:
        wire.send(response(200, body=path.encode()))


@pytest.mark.timeout(30)
def test_a_pooled_connection_is_reused_after_responses_its_parser_did_not_see_end(proxy):
    # A HEAD answer announces a body that never comes, and a large body is copied
    # past the parser: either leaves the connection's response parser mid-message.
    # The pool must hand the connection out again with a parser that starts afresh.
    sequence = [("GET", "/one"), ("HEAD", "/h"), ("GET", "/two"), ("GET", "/big"), ("GET", "/3")]
    with Upstream(http_server(_by_path)) as up:
        wire = Wire.connect(proxy.port)
        for method, path in sequence:
            wire.send(routed(method, path, up.port))
            reply = wire.read_response(method)
            assert reply.status == 200
            if method == "HEAD":
                assert reply.get("content-length") == "1234"
            elif path == "/big":
                assert reply.body == b"b" * (3 << 20)
            else:
                assert reply.body == path.encode()
        assert up.accepted == 1, "every request reused the one pooled upstream connection"


@pytest.mark.timeout(30)
def test_bodiless_responses_keep_their_upstream_connection(proxy):
    # 304, 204 and an empty 200 end with their head: the connection goes back to the pool.
    def bodiless(req, wire, upstream):
        status = {"/304": 304, "/204": 204}.get(req.start[1], 200)
        wire.send(response(status, [] if status != 200 else [("Content-Length", "0")]))

    with Upstream(http_server(bodiless)) as up:
        wire = Wire.connect(proxy.port)
        for path in ["/304", "/204", "/empty"] * 3:
            wire.send(routed("GET", path, up.port))
            assert wire.read_response().status in (304, 204, 200)
        assert up.accepted == 1
