"""Loops and port policy: the proxy never calls itself, and refused ports get a 403.

Each refusal is checked against a recording upstream: a refused request must not
open a connection anywhere.
"""

import sys

import pytest
from conftest import REPO, free_port, run_captured
from integration.rawclient import send_raw
from integration.recording import RecordingUpstream


def request(port: int, method: bytes = b"GET", host: bytes = b"t") -> bytes:
    return b"%s / HTTP/1.1\r\nHost: %s\r\nX-Cmux-Port-Internal: %d\r\nConnection: close\r\n\r\n" % (
        method,
        host,
        port,
    )


def assert_blocked(reply, port: int) -> None:
    assert reply.status == 403, reply
    assert reply.headers["x-cmux-error"] == "blocked-by-policy"
    assert reply.headers["content-type"].startswith("text/plain")
    assert reply.body == b"port %d blocked by policy" % port
    assert reply.closed


@pytest.fixture
def upstream():
    with RecordingUpstream() as server:
        yield server


@pytest.mark.timeout(20)
def test_routing_to_own_listen_socket_is_508(start_proxy, upstream):
    proxy = start_proxy()
    reply = send_raw(proxy.port, request(proxy.port))
    assert reply.status == 508, reply
    assert reply.body == b"routing loop"
    assert reply.headers["content-type"].startswith("text/plain")
    with_connect = send_raw(
        proxy.port, b"CONNECT x:1 HTTP/1.1\r\nX-Cmux-Port-Internal: %d\r\n\r\n" % proxy.port
    )
    assert with_connect.status == 508, with_connect
    assert send_raw(proxy.port, request(upstream.port)).status == 200  # still serving


@pytest.mark.timeout(20)
def test_wildcard_listener_loop_through_workspace_route_is_508(start_proxy):
    """0.0.0.0:P answers on every loopback address, so 127.18.x.y:P is us too."""
    wildcard = free_port("0.0.0.0")
    proxy = start_proxy("--listen", f"0.0.0.0:{wildcard}")
    host = b"workspace-7-%d.localhost" % wildcard
    reply = send_raw(proxy.port, b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
    assert reply.status == 508, reply
    reply = send_raw(proxy.port, request(wildcard, host=b"127.0.0.5"))
    assert reply.status == 508, reply


@pytest.mark.timeout(20)
def test_allow_ports_flag(start_proxy, upstream):
    other = free_port()
    proxy = start_proxy("--allow-ports", f"{upstream.port}-{upstream.port},{other + 1}")
    assert send_raw(proxy.port, request(upstream.port)).status == 200
    assert_blocked(send_raw(proxy.port, request(other)), other)
    assert len(upstream.connections) == 1


@pytest.mark.timeout(20)
def test_deny_ports_flag_with_ranges(start_proxy, upstream):
    proxy = start_proxy("--deny-ports", f"1-1023,{upstream.port}")
    assert_blocked(send_raw(proxy.port, request(upstream.port)), upstream.port)
    assert_blocked(send_raw(proxy.port, request(22)), 22)
    assert upstream.connections == []


@pytest.mark.timeout(20)
def test_deny_beats_allow(start_proxy, upstream):
    port = upstream.port
    proxy = start_proxy("--allow-ports", f"{port - 5}-{port + 5}", "--deny-ports", str(port))
    assert_blocked(send_raw(proxy.port, request(port)), port)
    assert upstream.connections == []


@pytest.mark.timeout(20)
def test_policy_from_environment(start_proxy, upstream):
    port = upstream.port
    allowed_by_env = start_proxy(env={"CMUX_ALLOW_PORTS": str(port + 1)})
    assert_blocked(send_raw(allowed_by_env.port, request(port)), port)
    denied_by_env = start_proxy(env={"CMUX_DENY_PORTS": f"{port}"})
    assert_blocked(send_raw(denied_by_env.port, request(port)), port)
    flag_wins = start_proxy("--deny-ports", "9", env={"CMUX_DENY_PORTS": f"{port}"})
    assert send_raw(flag_wins.port, request(port)).status == 200
    assert len(upstream.connections) == 1


@pytest.mark.timeout(20)
def test_policy_covers_host_routes_connect_and_upgrades(start_proxy):
    with RecordingUpstream(host="127.18.0.7") as upstream:
        port = upstream.port
        proxy = start_proxy("--deny-ports", str(port))
        by_host = b"GET / HTTP/1.1\r\nHost: workspace-7-%d.localhost\r\n\r\n" % port
        assert_blocked(send_raw(proxy.port, by_host), port)
        connect = b"CONNECT x:1 HTTP/1.1\r\nX-Cmux-Workspace-Internal: workspace-7\r\n"
        connect += b"X-Cmux-Port-Internal: %d\r\n\r\n" % port
        assert_blocked(send_raw(proxy.port, connect), port)
        upgrade = (
            b"GET /ws HTTP/1.1\r\nHost: workspace-7-%d.localhost\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n" % port
        )
        assert_blocked(send_raw(proxy.port, upgrade), port)
        assert upstream.connections == []


@pytest.mark.timeout(20)
@pytest.mark.parametrize("flag", ["--allow-ports", "--deny-ports"])
@pytest.mark.parametrize("value", ["0", "70000", "3000-2000", "http", "1-2-3"])
def test_invalid_port_lists_exit_2(flag, value):
    run = run_captured(
        [sys.executable, "-m", "cmux_gevent", "--listen", f"127.0.0.1:{free_port()}", flag, value],
        cwd=str(REPO),
        timeout=15,
    )
    assert run.returncode == 2, run
    assert "port" in run.stderr
