"""Every limit is on by default and each one holds against a real client.

Small values are given by flag to keep the tests fast; one test proves the
documented defaults are in force with no flags at all.
"""

import select
import socket
import time

import pytest
from integration.rawclient import (
    read_response,
    read_until_close,
    recv_head,
    request,
    send_raw,
    wait_closed,
)
from integration.recording import RecordingUpstream
from integration.upstreams import Upstream, tcp_echo


@pytest.fixture
def upstream():
    with RecordingUpstream() as server:
        yield server


def silent_for(sock, seconds: float) -> bool:
    """True if nothing (no byte, no EOF) arrives on `sock` for `seconds`."""
    readable, _, _ = select.select([sock], [], [], seconds)
    return not readable


@pytest.mark.timeout(30)
def test_defaults_are_on_without_flags(start_proxy, upstream):
    proxy = start_proxy()
    big_head = request(upstream.port, b"X-Big: " + b"a" * (70 * 1024))
    assert send_raw(proxy.port, big_head).status == 431
    many = [b"X-H%d: v" % i for i in range(101)]
    assert send_raw(proxy.port, request(upstream.port, *many)).status == 431
    long_line = request(upstream.port, target=b"/" + b"p" * (9 * 1024))
    assert send_raw(proxy.port, long_line).status == 414
    # Just under every default: served.
    fits = request(upstream.port, b"X-Big: " + b"a" * (60 * 1024), *many[:90])
    assert send_raw(proxy.port, fits).status == 200
    assert send_raw(proxy.port, request(upstream.port, target=b"/" + b"p" * 8000)).status == 200
    assert upstream.malformed_heads() == []
    assert len(upstream.heads()) == 2


@pytest.mark.timeout(30)
def test_head_size_limit_431(start_proxy, upstream):
    proxy = start_proxy("--max-head-bytes", "2048")
    reply = send_raw(proxy.port, request(upstream.port, b"X-Pad: " + b"a" * 2100))
    assert (reply.status, reply.closed) == (431, True), reply
    assert reply.headers["connection"] == "close"
    assert send_raw(proxy.port, request(upstream.port, b"X-Pad: " + b"a" * 1500)).status == 200
    assert len(upstream.heads()) == 1


@pytest.mark.timeout(30)
def test_oversized_head_dribbled_gets_431_before_it_ends(start_proxy, upstream):
    """A head that never ends is cut off at the limit, not buffered forever."""
    proxy = start_proxy("--max-head-bytes", "4096")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nX-Cmux-Port-Internal: %d\r\n" % upstream.port)
        sent = 0
        try:
            while sent < 64 * 1024:
                sock.sendall(b"X-Filler: " + b"f" * 500 + b"\r\n")
                sent += 512
        except OSError:
            pass  # the proxy answered and closed while we were still sending
        reply = read_until_close(sock, 5)
    assert reply.status == 431, reply
    assert upstream.connections == []


@pytest.mark.timeout(30)
def test_header_count_limit_431(start_proxy, upstream):
    proxy = start_proxy("--max-headers", "10")
    # request() adds Host, X-Cmux-Port-Internal and Connection: 3 fields.
    assert (
        send_raw(proxy.port, request(upstream.port, *[b"X-%d: v" % i for i in range(7)])).status
        == 200
    )
    reply = send_raw(proxy.port, request(upstream.port, *[b"X-%d: v" % i for i in range(8)]))
    assert (reply.status, reply.closed) == (431, True), reply
    assert len(upstream.heads()) == 1


@pytest.mark.timeout(30)
def test_request_line_limit_414(start_proxy, upstream):
    proxy = start_proxy("--max-request-line", "256")
    reply = send_raw(proxy.port, request(upstream.port, target=b"/" + b"x" * 300))
    assert (reply.status, reply.closed) == (414, True), reply
    assert send_raw(proxy.port, request(upstream.port, target=b"/" + b"x" * 200)).status == 200
    assert len(upstream.heads()) == 1


def _slowloris(port: int, silent_first: float = 0.0):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setblocking(False)
    return {
        "sock": sock,
        "opened": time.monotonic(),
        "next": time.monotonic() + silent_first,
        "sent": 0,
        "closed_at": None,
    }


@pytest.mark.timeout(30)
def test_slowloris_closed_while_normal_clients_served(start_proxy, upstream):
    proxy = start_proxy("--head-timeout", "1")
    attackers = [_slowloris(proxy.port) for _ in range(10)]
    attackers += [_slowloris(proxy.port, silent_first=0.8) for _ in range(10)]
    partial = b"GET / HTTP/1.1\r\nX-Cmux-Port-Internal: %d\r\nX-Slow: " % upstream.port
    served = 0
    deadline = time.monotonic() + 6
    while any(a["closed_at"] is None for a in attackers) and time.monotonic() < deadline:
        now = time.monotonic()
        for a in attackers:
            if a["closed_at"] is not None or now < a["next"]:
                continue
            try:
                byte = partial[a["sent"] : a["sent"] + 1] or b"a"
                a["sock"].send(byte)
                a["sent"] += 1
                a["next"] = now + 0.1
            except OSError:
                a["closed_at"] = now
                continue
            try:
                if a["sock"].recv(4096) == b"":
                    a["closed_at"] = now
            except BlockingIOError:
                pass
            except OSError:
                a["closed_at"] = now
        # A normal client is served at once all along.
        started = time.monotonic()
        assert send_raw(proxy.port, request(upstream.port), timeout=2).status == 200
        assert time.monotonic() - started < 0.5
        served += 1
    lifetimes = [a["closed_at"] - a["opened"] for a in attackers if a["closed_at"]]
    for a in attackers:
        a["sock"].close()
    assert len(lifetimes) == 20, "some slowloris connections were never closed"
    assert all(0.9 <= t < 1.6 for t in lifetimes), sorted(lifetimes)
    assert served >= 5
    assert upstream.malformed_heads() == [] and len(upstream.heads()) == served


@pytest.mark.timeout(30)
def test_slow_head_gets_408(start_proxy, upstream):
    proxy = start_proxy("--head-timeout", "1")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nX-Cmux-Port-Internal: %d\r\n" % upstream.port)
        started = time.monotonic()
        reply = read_until_close(sock, 5)
    assert (reply.status, reply.closed) == (408, True), reply
    assert 0.5 < time.monotonic() - started < 2.5
    assert upstream.connections == []


@pytest.mark.timeout(30)
def test_idle_keepalive_connection_closed_silently(start_proxy, upstream):
    proxy = start_proxy("--keepalive-timeout", "1", "--head-timeout", "10")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(request(upstream.port, close=False))
        assert read_response(sock).status == 200
        assert silent_for(sock, 0.5)  # still open half-way through the idle period
        sock.sendall(request(upstream.port, close=False))  # activity restarts the clock
        assert read_response(sock).status == 200
        idle_from = time.monotonic()
        rest = read_until_close(sock, 5)
    assert rest.closed and rest.data == b""  # closed without a stray 408
    assert 0.8 < time.monotonic() - idle_from < 2.5


@pytest.fixture
def blackhole():
    """A listener whose accept queue is full: a connect to it hangs (SYNs are dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    held = []
    for _ in range(4):
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        held.append(sock)
    probe = socket.socket()
    probe.settimeout(0.5)
    with pytest.raises(OSError):  # make sure the queue really is full
        probe.connect(("127.0.0.1", port))
    probe.close()
    yield port
    for sock in held:
        sock.close()
    listener.close()


@pytest.mark.timeout(30)
def test_upstream_connect_timeout_504(start_proxy, blackhole):
    proxy = start_proxy("--connect-timeout", "1")
    started = time.monotonic()
    reply = send_raw(proxy.port, request(blackhole), timeout=5)
    elapsed = time.monotonic() - started
    assert reply.status == 504, reply
    assert b"timed out" in reply.body
    assert 0.8 < elapsed < 2.5


@pytest.mark.timeout(30)
def test_response_head_timeout_504(start_proxy):
    proxy = start_proxy("--response-timeout", "1")
    with RecordingUpstream(answer=False) as silent:
        started = time.monotonic()
        reply = send_raw(proxy.port, request(silent.port), timeout=5)
        assert reply.status == 504, reply
        assert 0.8 < time.monotonic() - started < 2.5
        silent.wait_all_closed(timeout=2)  # the proxy let go of the upstream too


@pytest.fixture
def echo():
    """A TCP echo server: what a CONNECT tunnel reaches."""
    with Upstream(tcp_echo) as server:
        yield server


def open_tunnel(proxy_port: int, echo_port: int):
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=5)
    sock.sendall(b"CONNECT x:1 HTTP/1.1\r\nX-Cmux-Port-Internal: %d\r\n\r\n" % echo_port)
    head = recv_head(sock)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


@pytest.mark.timeout(30)
def test_tunnels_have_no_idle_timeout_by_default(start_proxy, echo):
    short = ("--head-timeout", "1", "--keepalive-timeout", "1", "--response-timeout", "1")
    proxy = start_proxy(*short)
    with open_tunnel(proxy.port, echo.port) as sock:
        assert silent_for(sock, 3.0)  # longer than every other timeout: still open
        sock.sendall(b"still here")
        assert sock.recv(100) == b"still here"


@pytest.mark.timeout(30)
def test_tunnel_idle_timeout_is_opt_in(start_proxy, echo):
    proxy = start_proxy("--tunnel-idle-timeout", "1")
    with open_tunnel(proxy.port, echo.port) as sock:
        sock.sendall(b"ping")
        assert sock.recv(100) == b"ping"
        idle_from = time.monotonic()
        assert wait_closed(sock, 5)
    assert 0.8 < time.monotonic() - idle_from < 3.0


@pytest.mark.timeout(30)
def test_max_connections_pauses_accepting_then_serves(start_proxy, upstream):
    proxy = start_proxy("--max-connections", "4", "--keepalive-timeout", "60")
    held = []
    for _ in range(4):  # four kept-alive clients: the proxy is full
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        sock.sendall(request(upstream.port, close=False))
        assert read_response(sock).status == 200
        held.append(sock)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as waiting:
        waiting.sendall(request(upstream.port))  # connected (kernel backlog), not refused
        assert silent_for(waiting, 1.0)  # ...but not accepted while full
        held.pop().close()
        started = time.monotonic()
        reply = read_until_close(waiting, 5)
        assert reply.status == 200, reply
        assert time.monotonic() - started < 1.5
    for sock in held:
        sock.sendall(request(upstream.port, close=False))  # the held ones still work
        assert read_response(sock).status == 200
        sock.close()
