"""route.py over parsed heads: every 400 reason, Host routes, policy, loops, origin-form."""

import pytest

from cmux_gevent import route as route_module
from cmux_gevent.config import Config
from cmux_gevent.errors import ClientError
from cmux_gevent.parser import Limits, request_parser
from cmux_gevent.route import host_route, is_own_listener, origin_form, parse_port, route

CONFIG = Config.defaults(listen="127.0.0.1:8080")


def head(*lines: bytes, target=b"/"):
    parser = request_parser(Limits())
    parser.feed(b"GET %s HTTP/1.1\r\n%s\r\n" % (target, b"".join(line + b"\r\n" for line in lines)))
    return parser.events[0]


def routed(*lines, config=CONFIG):
    target = route(head(*lines), config)
    return target.host, target.port, target.workspace


def refused(*lines, config=CONFIG):
    with pytest.raises(ClientError) as info:
        route(head(*lines), config)
    return info.value.status, info.value.reason


@pytest.mark.parametrize(
    "lines, reason",
    [
        ((), "missing required header: X-Cmux-Port-Internal"),
        ((b"Host: example.com",), "missing required header: X-Cmux-Port-Internal"),
        ((b"Host: localhost:3000",), "missing required header: X-Cmux-Port-Internal"),
        ((b"X-Cmux-Port-Internal:",), "header value cannot be empty"),
        ((b"X-Cmux-Port-Internal: \t ",), "header value cannot be empty"),
        ((b"X-Cmux-Port-Internal: x",), "invalid port in X-Cmux-Port-Internal"),
        ((b"X-Cmux-Port-Internal: 0",), "invalid port in X-Cmux-Port-Internal"),
        ((b"X-Cmux-Port-Internal: 65536",), "invalid port in X-Cmux-Port-Internal"),
        ((b"X-Cmux-Port-Internal: 70000",), "invalid port in X-Cmux-Port-Internal"),
        ((b"X-Cmux-Port-Internal: " + b"9" * 5000,), "invalid port in X-Cmux-Port-Internal"),
        ((b"X-Cmux-Port-Internal: 3000.0",), "invalid port in X-Cmux-Port-Internal"),
        ((b"X-Cmux-Port-Internal: 30 00",), "invalid port in X-Cmux-Port-Internal"),
        ((b"X-Cmux-Port-Internal: \xef\xbc\x93",), "invalid port in X-Cmux-Port-Internal"),
        ((b"X-Cmux-Port-Internal: \xff",), "invalid header value (not UTF-8)"),
        (
            (b"X-Cmux-Port-Internal: 1", b"X-Cmux-Workspace-Internal:  "),
            "X-Cmux-Workspace-Internal cannot be empty",
        ),
        (
            (b"X-Cmux-Port-Internal: 1", b"X-Cmux-Workspace-Internal: \xe9"),
            "invalid header value (not UTF-8)",
        ),
        (
            (b"X-Cmux-Port-Internal: 1", b"X-Cmux-Workspace-Internal: ws4294967296"),
            "invalid workspace name: ws4294967296",
        ),
        ((b"Host: ws4294967296-3000.localhost",), "invalid workspace name: ws4294967296"),
    ],
)
def test_every_400_reason(lines, reason):
    assert refused(*lines) == (400, reason)


def test_port_header_trimmed_and_default_upstream_host():
    assert routed(b"X-Cmux-Port-Internal:  3000 ") == ("127.0.0.1", 3000, None)
    assert routed(b"X-Cmux-Port-Internal: 00080") == ("127.0.0.1", 80, None)
    other = Config.defaults(listen="127.0.0.1:8080", upstream_host="127.0.0.9")
    assert routed(b"X-Cmux-Port-Internal: 1", config=other) == ("127.0.0.9", 1, None)


def test_workspace_header_maps_to_its_ip():
    lines = (b"X-Cmux-Port-Internal: 3000", b"X-Cmux-Workspace-Internal:  workspace-258 ")
    assert routed(*lines) == ("127.18.1.2", 3000, "workspace-258")
    lines = (b"X-Cmux-Port-Internal: 3000", b"X-Cmux-Workspace-Internal: feature/login")
    host, _, workspace = routed(*lines)
    assert host.startswith("127.18.") and workspace == "feature/login"


@pytest.mark.parametrize(
    "host, expected",
    [
        (b"workspace-1-3000.localhost", ("workspace-1", 3000)),
        (b"workspace-1-3000.localhost:8080", ("workspace-1", 3000)),
        (b"workspace-1-3000.localhost:", ("workspace-1", 3000)),
        (b"Workspace-1-3000.LocalHost", ("Workspace-1", 3000)),
        (b"my-feature-branch-5173.localhost", ("my-feature-branch", 5173)),
        (b" ws-1.localhost ", ("ws", 1)),
        (b"ws-65535.localhost", ("ws", 65535)),
        (b"ws-65536.localhost", (None, None)),
        (b"ws-0.localhost", (None, None)),
        (b"ws-30a.localhost", (None, None)),
        (b"-3000.localhost", (None, None)),
        (b"ws3000.localhost", (None, None)),
        (b"ws-3000.localhost.", (None, None)),
        (b"ws-3000.sub.localhost", (None, None)),
        (b"ws-3000.notlocalhost", (None, None)),
        (b"ws-3000.localhost.example.com", (None, None)),
        (b"localhost:3000", (None, None)),
        (b"[::1]:3000", (None, None)),
        (b"[::1]", (None, None)),
        (b"[ws-3000.localhost]", (None, None)),
        (b"w\xc3\xa9-3000.localhost", (None, None)),
        (b"", (None, None)),
        (None, (None, None)),
    ],
)
def test_host_route(host, expected):
    assert host_route(host) == expected


def test_headers_fill_in_what_host_leaves_out():
    host = b"Host: workspace-3-4000.localhost"
    assert routed(host) == ("127.18.0.3", 4000, "workspace-3")
    assert routed(host, b"X-Cmux-Port-Internal: 5000") == ("127.18.0.3", 5000, "workspace-3")
    assert routed(host, b"X-Cmux-Workspace-Internal: workspace-9") == (
        "127.18.0.9",
        4000,
        "workspace-9",
    )
    assert refused(host, b"X-Cmux-Port-Internal: nope") == (
        400,
        "invalid port in X-Cmux-Port-Internal",
    )


def test_parse_port():
    assert [parse_port(t) for t in ("1", "65535", "0", "65536", "", "-1", "\u0663", "1e3")] == [
        1,
        65535,
        None,
        None,
        None,
        None,
        None,
        None,
    ]


def test_ports_are_read_as_rusts_u16_reads_them():
    """Leading zeros are fine; a number of thousands of digits is just invalid (int() would
    refuse to convert it and take the connection down)."""
    assert parse_port("03000") == 3000 and parse_port("0" * 40 + "80") == 80
    assert parse_port("9" * 5000) is None and parse_port("000") is None
    assert routed(b"X-Cmux-Port-Internal: 0003000") == ("127.0.0.1", 3000, None)
    assert host_route(b"ws-" + b"9" * 5000 + b".localhost") == (None, None)


def test_policy_403_names_port_and_marks_header():
    config = Config.defaults(listen="127.0.0.1:8080", allow_ports="3000-3999", deny_ports="3306")
    assert routed(b"X-Cmux-Port-Internal: 3000", config=config)[1] == 3000
    for port in (22, 3306, 4000):
        with pytest.raises(ClientError) as info:
            route(head(b"X-Cmux-Port-Internal: %d" % port), config)
        assert (info.value.status, info.value.reason) == (403, f"port {port} blocked by policy")
        assert (b"X-Cmux-Error", b"blocked-by-policy") in info.value.headers


def test_decisions_are_remembered_only_once_the_policy_let_them_through(monkeypatch):
    config = Config.defaults(listen="127.0.0.1:8080", deny_ports="3306")
    first = route(head(b"X-Cmux-Port-Internal: 3000"), config)
    assert route(head(b"X-Cmux-Port-Internal: 3000"), config) is first
    for _ in range(2):  # a refusal is decided afresh every time, never remembered
        with pytest.raises(ClientError):
            route(head(b"X-Cmux-Port-Internal: 3306"), config)
    assert list(config.targets) == [(None, b"3000", None)]
    monkeypatch.setattr(route_module, "TARGETS_KEPT", 10)
    for port in range(4000, 4025):  # many workspaces x ports: the memo stays bounded
        route(head(b"X-Cmux-Port-Internal: %d" % port), config)
    assert 0 < len(config.targets) <= 10
    long_name = b"X-Cmux-Workspace-Internal: " + b"w" * 10_000
    assert route(head(b"X-Cmux-Port-Internal: 3000", long_name), config).port == 3000
    assert all(len(workspace or b"") <= 512 for _, _, workspace in config.targets), "not kept"


def test_a_remembered_decision_serves_only_requests_with_the_same_fields():
    """Requests that differ in any routing field, interleaved on one Config, each get
    the Target a fresh Config would give them."""
    config = Config.defaults(listen="127.0.0.1:8080")
    requests = [
        (b"X-Cmux-Port-Internal: 3000",),
        (b"X-Cmux-Port-Internal: 3001",),
        (b"X-Cmux-Port-Internal: 3000", b"X-Cmux-Workspace-Internal: workspace-2"),
        (b"Host: ws-a-3000.localhost",),
        (b"Host: ws-b-3000.localhost",),
        (b"Host: ws-b-3000.localhost", b"X-Cmux-Port-Internal: 4000"),
        (b"Host: ws-b-3000.localhost", b"X-Cmux-Workspace-Internal: other"),
    ]
    for lines in requests * 3:
        fresh = Config.defaults(listen="127.0.0.1:8080")
        assert routed(*lines, config=config) == routed(*lines, config=fresh), lines
    assert len(config.targets) == len(requests)


def test_target_names_an_ipv6_upstream_in_brackets():
    config = Config.defaults(listen="127.0.0.1:8080", upstream_host="::1")
    target = route(head(b"X-Cmux-Port-Internal: 3000"), config)
    assert (target.name, target.log_name) == ("[::1]:3000", b"port=3000 upstream=::1")


def test_routing_to_ourselves_is_508():
    assert refused(b"X-Cmux-Port-Internal: 8080") == (508, "routing loop")
    wildcard = Config.defaults(listen="0.0.0.0:8080")
    lines = (b"X-Cmux-Port-Internal: 8080", b"X-Cmux-Workspace-Internal: workspace-1")
    assert refused(*lines, config=wildcard) == (508, "routing loop")
    assert routed(*lines) == ("127.18.0.1", 8080, "workspace-1")  # not our address


@pytest.mark.parametrize(
    "host, port, listen, ours",
    [
        ("127.0.0.1", 8080, [("127.0.0.1", 8080)], True),
        ("127.0.0.1", 8081, [("127.0.0.1", 8080)], False),
        ("127.0.0.2", 8080, [("127.0.0.1", 8080)], False),
        ("127.18.0.1", 8080, [("0.0.0.0", 8080)], True),
        ("::1", 8080, [("::", 8080)], True),
        ("::1", 8080, [("0.0.0.0", 8080)], True),
        ("localhost", 8080, [("127.0.0.1", 8080)], False),
    ],
)
def test_is_own_listener(host, port, listen, ours):
    assert is_own_listener(host, port, listen) is ours


LISTEN = [("127.0.0.1", 8080)]


@pytest.mark.parametrize(
    "target, host, path",
    [
        (b"http://ws-3000.localhost/a?b=1", b"ws-3000.localhost", b"/a?b=1"),
        (b"http://ws-3000.localhost?q", b"ws-3000.localhost", b"/?q"),
        (b"http://ws-3000.localhost", b"ws-3000.localhost", b"/"),
        (b"http://127.0.0.1:8080/x", b"127.0.0.1:8080", b"/x"),
    ],
)
def test_absolute_form_naming_us_becomes_origin_form(target, host, path):
    original = head(b"Host: stale", b"X-A: 1", target=target)
    converted = origin_form(original, LISTEN)
    assert converted.target == path
    assert converted.get(b"host") == host and converted.get_all(b"host") == [host]
    assert converted.get(b"x-a") == b"1"


@pytest.mark.parametrize(
    "target",
    [b"http://example.com/", b"http://127.0.0.1:9999/", b"http://user@ws-3000.localhost/"],
)
def test_absolute_form_naming_others_is_400(target):
    with pytest.raises(ClientError) as info:
        origin_form(head(target=target), LISTEN)
    assert info.value.status == 400 and "request target must be a path" in info.value.reason


def test_origin_form_is_left_alone():
    original = head(b"Host: a")
    assert origin_form(original, LISTEN) is original
