"""Upgrades through a real daemon: raw `Upgrade: custom` tunnels and real WebSockets.

The WebSocket upstream is a minimal RFC 6455 echo server (upstreams.ws_echo);
the client is websocket-client, so frames are built and checked by a real peer
on each side of the proxy.
"""

import concurrent.futures
import os
import struct

import pytest
import websocket
from integration.upstreams import (
    Upstream,
    Wire,
    answers,
    raw_upgrade_echo,
    routed,
    send_routed,
    ws_echo,
)

from cmux_gevent import workspace_ip


@pytest.fixture(scope="module")
def ws_upstream():
    with Upstream(ws_echo) as up:
        yield up


def assert_binary_echoed(ws, payload: bytes) -> None:
    ws.send_binary(payload)
    opcode, data = ws.recv_data()
    assert opcode == websocket.ABNF.OPCODE_BINARY and data == payload


def connect_ws(proxy, port, **kwargs):
    return websocket.create_connection(
        f"ws://127.0.0.1:{proxy.port}/socket?x=1",
        header=[f"X-Cmux-Port-Internal: {port}"],
        timeout=10,
        **kwargs,
    )


@pytest.mark.timeout(20)
def test_raw_upgrade_echo(proxy):
    with Upstream(raw_upgrade_echo) as up:
        wire = Wire.connect(proxy.port)
        headers = [("Connection", "upgrade"), ("Upgrade", "custom")]
        wire.send(routed("GET", "/raw", up.port, headers) + b"early bytes|")
        msg = wire.read_head()
        assert msg.status == 101 and msg.get("upgrade") == "custom"
        assert "upgrade" in msg.get("connection").lower()
        assert wire.read_exact(12) == b"early bytes|"
        for n in range(5):
            wire.send(b"ping %d\x00\xff" % n)
            assert wire.read_exact(8) == b"ping %d\x00\xff" % n
        seen = up.requests[0]
        assert seen.get("upgrade") == "custom" and seen.get("x-cmux-port-internal") is None


@pytest.mark.timeout(20)
def test_websocket_text_and_binary_frames(proxy, ws_upstream):
    ws = connect_ws(proxy, ws_upstream.port)
    ws.send("héllo wörld")
    assert ws.recv() == "héllo wörld"
    assert_binary_echoed(ws, bytes(range(256)) * 3)
    ws.close()


@pytest.mark.timeout(20)
def test_websocket_ping_pong(proxy, ws_upstream):
    ws = connect_ws(proxy, ws_upstream.port)
    ws.ping(b"are you there")
    opcode, frame = ws.recv_data_frame(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_PONG and frame.data == b"are you there"
    ws.close()


@pytest.mark.timeout(30)
def test_16_concurrent_websocket_clients(proxy, ws_upstream):
    def session(n):
        ws = connect_ws(proxy, ws_upstream.port)
        try:
            for i in range(20):
                message = f"client {n} message {i}"
                ws.send(message)
                assert ws.recv() == message
        finally:
            ws.close()
        return n

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert sorted(pool.map(session, range(16))) == list(range(16))


@pytest.mark.timeout(30)
def test_websocket_5mb_message(proxy, ws_upstream):
    ws = connect_ws(proxy, ws_upstream.port)
    assert_binary_echoed(ws, os.urandom(5 * 1024 * 1024))
    ws.close()


@pytest.mark.timeout(20)
def test_websocket_close_handshake_echoes_code(proxy, ws_upstream):
    ws = connect_ws(proxy, ws_upstream.port)
    ws.send_close(status=4001, reason=b"bye")
    opcode, frame = ws.recv_data_frame(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert struct.unpack("!H", frame.data[:2]) == (4001,)
    ws.sock.settimeout(5)
    assert ws.sock.recv(1) == b""  # the proxy closes once the upstream has
    ws.shutdown()


@pytest.mark.timeout(20)
def test_websocket_routed_by_workspace_and_host(proxy):
    ip = workspace_ip("workspace-3320")
    with Upstream(ws_echo, host=ip) as up:
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{proxy.port}/",
            host=f"workspace-3320-{up.port}.localhost",
            timeout=10,
        )
        ws.send("via host")
        assert ws.recv() == "via host"
        ws.close()
        assert up.requests[0].get("host") == f"workspace-3320-{up.port}.localhost"


@pytest.mark.timeout(20)
def test_refused_upgrade_relays_the_upstream_answer(proxy):
    refuse = answers(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 4\r\n\r\nnope")
    with Upstream(refuse) as up:
        wire = send_routed(
            proxy, "GET", "/", up.port, [("Connection", "Upgrade"), ("Upgrade", "x")]
        )
        msg = wire.read_response()
        assert (msg.status, msg.body) == (426, b"nope")
        assert wire.at_eof()


@pytest.mark.timeout(20)
def test_refused_upgrade_from_an_http10_client_is_not_chunked(proxy):
    # A chunked refusal cannot be re-chunked for HTTP/1.0: it comes as is, ended by the close.
    refuse = answers(
        b"HTTP/1.1 426 Upgrade Required\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnope\r\n0\r\n\r\n"
    )
    with Upstream(refuse) as up:
        wire = send_routed(
            proxy,
            "GET",
            "/",
            up.port,
            [("Connection", "Upgrade"), ("Upgrade", "x")],
            version="HTTP/1.0",
        )
        msg = wire.read_response()
        assert msg.status == 426
        assert msg.get("transfer-encoding") is None
        assert msg.body == b"nope"


@pytest.mark.timeout(20)
def test_upgrade_to_closed_port_is_502(proxy):
    with Upstream(ws_echo) as up:
        port = up.port
    wire = send_routed(
        proxy, "GET", "/", port, [("Connection", "Upgrade"), ("Upgrade", "websocket")]
    )
    msg = wire.read_response()
    assert msg.status == 502 and msg.body.startswith(b"upstream request error:")
