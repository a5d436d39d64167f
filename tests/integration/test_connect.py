"""CONNECT tunnels through a real daemon to a raw TCP echo server.

The echo upstream answers "goodbye after EOF" once it sees the client's EOF, so
a tunnel that closes both directions on the first EOF loses that answer.
"""

import socket

import pytest
from integration.upstreams import Upstream, Wire, tcp_echo

from cmux_gevent import workspace_ip


def connect(proxy, authority, port, extra=b""):
    wire = Wire.connect(proxy.port)
    wire.send(
        b"CONNECT %s HTTP/1.1\r\nHost: %s\r\nX-Cmux-Port-Internal: %d\r\n\r\n%s"
        % (authority.encode(), authority.encode(), port, extra)
    )
    return wire, wire.read_head()


@pytest.mark.timeout(20)
def test_connect_echo(proxy):
    with Upstream(tcp_echo) as up:
        wire, msg = connect(proxy, f"127.0.0.1:{up.port}", up.port, b"sent with the head|")
        assert msg.status == 200
        assert wire.read_exact(19) == b"sent with the head|"
        for n in range(10):
            wire.send(b"\x00binary %d\xff" % n)
            assert wire.read_exact(10) == b"\x00binary %d\xff" % n


@pytest.mark.timeout(20)
def test_connect_half_close_upstream_answer_still_arrives(proxy):
    with Upstream(tcp_echo) as up:
        wire, msg = connect(proxy, f"127.0.0.1:{up.port}", up.port)
        assert msg.status == 200
        wire.send(b"last words")
        assert wire.read_exact(10) == b"last words"
        wire.sock.shutdown(socket.SHUT_WR)  #: the client is done sending, still reading
        assert wire.read_to_eof() == b"goodbye after EOF"


@pytest.mark.timeout(20)
def test_connect_to_closed_port_is_a_real_502(proxy):
    with Upstream(tcp_echo) as up:
        port = up.port
    wire, msg = connect(proxy, f"127.0.0.1:{port}", port)
    assert msg.status == 502
    body = wire.read_exact(int(msg.get("content-length")))
    assert body.startswith(b"upstream request error:") and f"127.0.0.1:{port}".encode() in body
    assert msg.get("content-type").startswith("text/plain")
    assert wire.at_eof()


@pytest.mark.timeout(20)
def test_connect_routed_by_workspace(proxy):
    ip = workspace_ip("workspace-3330")
    with Upstream(tcp_echo, host=ip) as up:
        wire = Wire.connect(proxy.port)
        wire.send(
            b"CONNECT %s:%d HTTP/1.1\r\nX-Cmux-Port-Internal: %d\r\n"
            b"X-Cmux-Workspace-Internal: workspace-3330\r\n\r\n" % (ip.encode(), up.port, up.port)
        )
        assert wire.read_head().status == 200
        wire.send(b"hello workspace")
        assert wire.read_exact(15) == b"hello workspace"


@pytest.mark.timeout(20)
def test_connect_without_routing_header_is_400(proxy):
    wire = Wire.connect(proxy.port)
    wire.send(b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n")
    msg = wire.read_response()
    assert msg.status == 400 and msg.body == b"missing required header: X-Cmux-Port-Internal"
