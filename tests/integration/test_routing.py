"""Routing through a real daemon to real upstreams on 127.0.0.1 and 127.18.x.y.

Ports cmux-proxy's routing tests (header routing, 400 without it, workspace
header with numeric and non-numeric names, Host-subdomain routing, 502 until a
workspace server starts, one port in two workspaces) and pins every 400 reason.
Workspace numbers are in the 3300s so that other suites' servers never collide.
"""

import pytest
import requests
from conftest import free_port
from integration.upstreams import Upstream, Wire, described, echo_http, routed

from cmux_gevent import workspace_ip


@pytest.fixture(scope="module")
def upstream():
    with Upstream(echo_http, name="default") as up:
        yield up


def get(proxy, headers, path="/"):
    return requests.get(proxy.url + path, headers=headers, timeout=10)


@pytest.mark.timeout(20)
def test_routed_by_port_header(proxy, upstream):
    resp = get(proxy, {"X-Cmux-Port-Internal": str(upstream.port)}, "/hello?x=1")
    seen = resp.json()
    assert resp.status_code == 200
    assert seen["server"] == "default" and seen["target"] == "/hello?x=1"


@pytest.mark.timeout(20)
def test_port_header_value_is_trimmed(proxy, upstream):
    raw = f"GET / HTTP/1.1\r\nHost: a\r\nX-Cmux-Port-Internal:   {upstream.port}  \r\n\r\n"
    wire = Wire.connect(proxy.port)
    wire.send(raw.encode())
    assert described(wire.read_response())["server"] == "default"


def _raw_reply(proxy, request: bytes):
    wire = Wire.connect(proxy.port)
    wire.send(request)
    msg = wire.read_response()
    closed = wire.at_eof()
    wire.close()
    return msg, closed


REASONS = [
    (b"Host: a\r\n", "missing required header: X-Cmux-Port-Internal"),
    (b"X-Cmux-Port-Internal:\r\n", "header value cannot be empty"),
    (b"X-Cmux-Port-Internal:   \r\n", "header value cannot be empty"),
    (b"X-Cmux-Port-Internal: abc\r\n", "invalid port in X-Cmux-Port-Internal"),
    (b"X-Cmux-Port-Internal: 0\r\n", "invalid port in X-Cmux-Port-Internal"),
    (b"X-Cmux-Port-Internal: 65536\r\n", "invalid port in X-Cmux-Port-Internal"),
    (b"X-Cmux-Port-Internal: " + b"9" * 5000 + b"\r\n", "invalid port in X-Cmux-Port-Internal"),
    (b"X-Cmux-Port-Internal: -80\r\n", "invalid port in X-Cmux-Port-Internal"),
    (b"X-Cmux-Port-Internal: +80\r\n", "invalid port in X-Cmux-Port-Internal"),
    (b"X-Cmux-Port-Internal: \xd9\xa3\r\n", "invalid port in X-Cmux-Port-Internal"),
    (b"X-Cmux-Port-Internal: \xff80\r\n", "invalid header value (not UTF-8)"),
    (
        b"X-Cmux-Port-Internal: 80\r\nX-Cmux-Workspace-Internal: \r\n",
        "X-Cmux-Workspace-Internal cannot be empty",
    ),
    (
        b"X-Cmux-Port-Internal: 80\r\nX-Cmux-Workspace-Internal: \xc3\r\n",
        "invalid header value (not UTF-8)",
    ),
    (
        b"X-Cmux-Port-Internal: 80\r\nX-Cmux-Workspace-Internal: workspace-99999999999\r\n",
        "invalid workspace name: workspace-99999999999",
    ),
    (b"Host: workspace-1-0.localhost\r\n", "missing required header: X-Cmux-Port-Internal"),
]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("headers, reason", REASONS)
def test_every_400_reason_is_exact_plain_text_and_closes(proxy, headers, reason):
    msg, closed = _raw_reply(proxy, b"GET / HTTP/1.1\r\n" + headers + b"\r\n")
    assert msg.status == 400
    assert msg.body.decode() == reason
    assert msg.get("content-type").startswith("text/plain")
    assert msg.get("connection") == "close"
    assert closed


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "request_bytes, reason",
    [
        (b"GET / HTTP/1.2\r\nX-Cmux-Port-Internal: 80\r\n\r\n", "bad request: "),
        (b"GET / HTTP/2.0\r\nX-Cmux-Port-Internal: 80\r\n\r\n", "unsupported HTTP version 2.0"),
        (
            b"POST / HTTP/1.1\r\nX-Cmux-Port-Internal: 80\r\n"
            b"Transfer-Encoding: gzip, chunked\r\n\r\n",
            "Transfer-Encoding other than chunked",
        ),
        (b"GET http://x/ HTTP/1.1\r\nX-Cmux-Port-Internal: 80\r\n\r\n", "target must be a path"),
        (b"GET / HTTP/1.1\r\nBad Header: 1\r\n\r\n", "bad request: "),
    ],
)
def test_malformed_requests_get_400_and_close(proxy, request_bytes, reason):
    msg, closed = _raw_reply(proxy, request_bytes)
    assert msg.status == 400
    assert reason in msg.body.decode()
    assert msg.get("content-type").startswith("text/plain")
    assert closed


@pytest.mark.timeout(20)
def test_routing_headers_are_not_forwarded(proxy, upstream):
    resp = get(proxy, {"X-Cmux-Port-Internal": str(upstream.port), "X-Other": "kept"})
    names = [n.lower() for n, _ in resp.json()["headers"]]
    assert "x-cmux-port-internal" not in names and "x-other" in names
    ws = workspace_ip("workspace-3301")
    with Upstream(echo_http, host=ws) as up:
        headers = {
            "X-Cmux-Port-Internal": str(up.port),
            "X-Cmux-Workspace-Internal": "workspace-3301",
        }
        names = [n.lower() for n, _ in get(proxy, headers).json()["headers"]]
    assert not [n for n in names if n.startswith("x-cmux")]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", ["workspace-3302", "3303", "feature/login-page", "Ärger"])
def test_workspace_header_routes_to_workspace_ip(proxy, name):
    ip = workspace_ip(name)
    assert ip.startswith("127.18.")
    with Upstream(echo_http, host=ip, name=name) as up:
        wire = Wire.connect(proxy.port)
        wire.send(
            routed("GET", "/", up.port)[:-2]
            + b"X-Cmux-Workspace-Internal: %s\r\n\r\n" % name.encode()
        )
        assert described(wire.read_response())["server"] == name


@pytest.mark.timeout(20)
def test_host_subdomain_routes_workspace_and_port(proxy):
    ip = workspace_ip("workspace-3304")
    with Upstream(echo_http, host=ip, name="a") as up:
        for host in (
            f"workspace-3304-{up.port}.localhost",
            f"Workspace-3304-{up.port}.LOCALHOST:9",
        ):
            seen = get(proxy, {"Host": host}).json()
            assert seen["server"] == "a"
            assert ["Host", host] in seen["headers"]  # Host is forwarded unchanged


@pytest.mark.timeout(20)
def test_headers_win_over_host_route(proxy, upstream):
    ip = workspace_ip("workspace-3305")
    with Upstream(echo_http, host=ip, name="ws") as up:
        host = f"workspace-3305-{upstream.port}.localhost"
        # Port from the header, workspace from Host.
        assert (
            get(proxy, {"Host": host, "X-Cmux-Port-Internal": str(up.port)}).json()["server"]
            == "ws"
        )
        # Workspace from the header, port from Host.
        host = f"other-{up.port}.localhost"
        headers = {"Host": host, "X-Cmux-Workspace-Internal": "workspace-3305"}
        assert get(proxy, headers).json()["server"] == "ws"


@pytest.mark.timeout(20)
def test_502_until_workspace_server_starts_then_200(proxy):
    ip = workspace_ip("workspace-3306")
    port = free_port(ip)
    headers = {"X-Cmux-Port-Internal": str(port), "X-Cmux-Workspace-Internal": "workspace-3306"}
    resp = get(proxy, headers)
    assert resp.status_code == 502
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert resp.text.startswith("upstream request error:") and f"{ip}:{port}" in resp.text
    with Upstream(echo_http, host=ip, port=port):
        assert get(proxy, headers).status_code == 200


@pytest.mark.timeout(20)
def test_same_port_in_two_workspaces_answered_by_the_right_one(proxy):
    first = Upstream(echo_http, host=workspace_ip("workspace-3307"), name="seven")
    port = first.port
    with first, Upstream(echo_http, host=workspace_ip("workspace-3308"), port=port, name="eight"):
        for name, expect in [("workspace-3307", "seven"), ("workspace-3308", "eight")] * 2:
            headers = {"X-Cmux-Port-Internal": str(port), "X-Cmux-Workspace-Internal": name}
            assert get(proxy, headers).json()["server"] == expect
            host = {"Host": f"{name}-{port}.localhost"}
            assert get(proxy, host).json()["server"] == expect


@pytest.mark.timeout(20)
def test_no_workspace_uses_upstream_host(proxy, upstream):
    # A Host that is not a <workspace>-<port>.localhost route names no workspace.
    headers = {"Host": f"plain-{upstream.port}.example", "X-Cmux-Port-Internal": str(upstream.port)}
    seen = get(proxy, headers).json()
    assert (seen["server"], upstream.host) == ("default", "127.0.0.1")


@pytest.mark.timeout(20)
def test_an_ipv6_upstream_is_named_in_brackets_in_the_502(start_proxy):
    proxy = start_proxy("--upstream-host", "::1")
    port = free_port("::1")  # nothing listens there
    reply = requests.get(proxy.url, headers={"X-Cmux-Port-Internal": str(port)}, timeout=10)
    assert reply.status_code == 502
    assert reply.text.startswith(f"upstream request error: connect to [::1]:{port} failed")
