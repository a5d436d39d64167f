"""Request smuggling: every ambiguous or malformed message is refused, nothing of it forwarded.

Each vector goes to a real proxy routed at a recording upstream. After the 400
and the close, a sentinel request through the same proxy proves the upstream
side is settled: the upstream saw the sentinel and nothing else.
"""

import socket
import threading

import pytest
from conftest import wait_until
from integration.rawclient import (
    read_response,
    read_until_close,
    recv_head,
    recv_until,
    send_raw,
    wait_closed,
)
from integration.recording import RecordingUpstream, ScriptedUpstream
from integration.vectors import BAD_CHUNKS, CHUNKED_HEAD, VECTORS, P, head

SENTINEL = (
    b"GET /sentinel HTTP/1.1\r\nHost: s\r\nX-Cmux-Port-Internal: %d\r\nConnection: close\r\n\r\n"
)


@pytest.fixture
def upstream():
    with RecordingUpstream() as server:
        yield server


def assert_only_sentinel(proxy, upstream):
    """The upstream got the sentinel request and not one byte of anything else."""
    reply = send_raw(proxy.port, SENTINEL % upstream.port, timeout=2)
    assert reply.status == 200, reply
    upstream.wait_connections(1)
    assert upstream.heads() == [upstream.received()]
    assert upstream.received().startswith(b"GET /sentinel HTTP/1.1\r\n")
    assert len(upstream.connections) == 1


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", list(VECTORS))
def test_vector_gets_400_and_nothing_reaches_upstream(proxy, upstream, name):
    request = VECTORS[name] % {b"port": upstream.port}
    reply = send_raw(proxy.port, request, timeout=3)
    assert reply.status == 400, reply
    assert reply.closed, reply
    assert reply.headers.get("connection") == "close"
    assert_only_sentinel(proxy, upstream)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("split", ["one-send", "after-head-went-upstream"])
@pytest.mark.parametrize("name", list(BAD_CHUNKS))
def test_invalid_chunk_never_forwarded_and_upstream_closed(proxy, upstream, name, split):
    """The head may have gone upstream (sent on its own, it surely has); the bad
    bytes never follow it, the client gets a 400 and that upstream is closed."""
    request = CHUNKED_HEAD % {b"port": upstream.port}
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=3) as sock:
        if split == "after-head-went-upstream":
            sock.sendall(request)
            assert wait_until(lambda: upstream.received().endswith(b"\r\n\r\n")), upstream
            request = b""
        sock.sendall(request + BAD_CHUNKS[name])
        reply = read_until_close(sock, 3)
    assert reply.status == 400, reply
    assert reply.closed
    upstream.wait_all_closed(timeout=3)
    received = upstream.received()
    assert b"A" not in received and b"zz" not in received, received
    if received:
        assert len(upstream.connections) == 1 and upstream.connections[0].answered == 0
        forwarded, _, body = received.partition(b"\r\n\r\n")
        assert forwarded.startswith(b"POST /upload HTTP/1.1\r\n")
        assert body in (b"", b"3\r\nok!\r\n"), body


MALFORMED_RESPONSES = {
    "cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
    "two-content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    "bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 3\n\nabc",
    "nul-in-value": b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 3\r\n\r\nabc",
    "space-before-colon": b"HTTP/1.1 200 OK\r\nX : a\r\nContent-Length: 3\r\n\r\nabc",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 3\r\n\r\nabc",
    "version-2.0": b"HTTP/2.0 200 OK\r\nContent-Length: 3\r\n\r\nabc",
    "version-0.9": b"HTTP/0.9 200 OK\r\nContent-Length: 3\r\n\r\nabc",
    "version-1.2": b"HTTP/1.2 200 OK\r\nContent-Length: 3\r\n\r\nabc",
    "status-four-digits": b"HTTP/1.1 2000 OK\r\nContent-Length: 3\r\n\r\nabc",
    "ctl-in-reason": b"HTTP/1.1 200 O\x01K\r\nContent-Length: 3\r\n\r\nabc",
    "te-chunked-identity": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\nabc",
    "te-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "not-http": b"SSH-2.0-OpenSSH_9.6\r\n",
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", list(MALFORMED_RESPONSES))
def test_malformed_upstream_head_is_502_never_relayed(proxy, name):
    with RecordingUpstream(response=MALFORMED_RESPONSES[name]) as upstream:
        request = head(b"GET /r HTTP/1.1", b"Host: a", P) % {b"port": upstream.port}
        reply = send_raw(proxy.port, request, timeout=3)
        assert reply.status == 502, reply
        assert reply.closed
        assert b"abc" not in reply.data and b"SSH" not in reply.data
        assert reply.data.count(b"HTTP/1.1 ") == 1
        upstream.wait_all_closed(timeout=3)


@pytest.mark.timeout(20)
def test_invalid_chunk_in_upstream_body_truncates(proxy):
    """Response bytes already went out: the client sees a body that never ends, then a close."""
    client_has_head = threading.Event()

    def script(sock):
        recv_head(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        client_has_head.wait(5)
        sock.sendall(b"0x5\r\nEVILX\r\n0\r\n\r\n")
        return wait_closed(sock, 3)

    with ScriptedUpstream(script) as upstream:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=3) as sock:
            sock.sendall(head(b"GET /r HTTP/1.1", b"Host: a", P) % {b"port": upstream.port})
            first, _ = recv_until(sock, lambda seen: b"abc" in seen, size=4096)
            client_has_head.set()
            rest = read_until_close(sock, 3)
        assert first.startswith(b"HTTP/1.1 200 OK\r\n")
        assert rest.closed
        assert b"EVIL" not in rest.data and b"0\r\n\r\n" not in rest.data, rest
        assert upstream.wait_results(1) == [True]  # the proxy closed the upstream too


# -- absolute-form: accepted only when it names this proxy, forwarded in origin-form --


@pytest.mark.timeout(20)
def test_absolute_form_localhost_route_forwarded_in_origin_form(proxy):
    with RecordingUpstream(host="127.18.0.7") as upstream:  # workspace-7
        request = b"GET http://workspace-7-%d.localhost/a/b?c=d HTTP/1.1\r\nHost: ignored\r\n\r\n"
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=3) as sock:
            sock.sendall(request % upstream.port)
            reply = read_response(sock)
        assert reply.status == 200, reply
        assert reply.body == b"ok"
        [forwarded] = upstream.heads()
        assert forwarded.startswith(b"GET /a/b?c=d HTTP/1.1\r\n"), forwarded
        assert b"\r\nHost: workspace-7-%d.localhost\r\n" % upstream.port in forwarded
        assert b"ignored" not in forwarded
        assert upstream.malformed_heads() == []


@pytest.mark.timeout(20)
def test_absolute_form_naming_proxy_listen_address_forwarded(proxy, upstream):
    request = b"GET http://127.0.0.1:%d HTTP/1.1\r\nX-Cmux-Port-Internal: %d\r\n\r\n"
    reply = send_raw(proxy.port, request % (proxy.port, upstream.port) + SENTINEL % upstream.port)
    assert reply.data.count(b"HTTP/1.1 200 OK") == 2, reply
    heads = upstream.heads()
    assert heads[0].startswith(b"GET / HTTP/1.1\r\n"), heads
    assert heads[1].startswith(b"GET /sentinel HTTP/1.1\r\n"), heads
    assert upstream.malformed_heads() == []


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "target",
    [
        b"https://workspace-7-3000.localhost/",
        b"http://user@workspace-7-3000.localhost/",
        b"http://workspace-7-3000.localhost.evil.com/",
        b"http://127.0.0.2:%(proxy)d/",
    ],
)
def test_absolute_form_other_authority_refused(proxy, upstream, target):
    request = b"GET " + target + b" HTTP/1.1\r\nX-Cmux-Port-Internal: %(port)d\r\n\r\n"
    reply = send_raw(proxy.port, request % {b"port": upstream.port, b"proxy": proxy.port})
    assert reply.status == 400, reply
    assert reply.closed
    assert_only_sentinel(proxy, upstream)
