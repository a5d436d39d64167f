"""config.py: listen parsing and dedupe, port lists, precedence flag > env > default."""

import pytest
from docopt import docopt

from cmux_gevent.cli import usage
from cmux_gevent.config import (
    OPTIONS,
    Config,
    ConfigError,
    default_max_connections,
    parse_address,
    parse_listen,
    parse_ports,
)


@pytest.mark.parametrize(
    "values, expected",
    [
        (["0.0.0.0:8080,127.0.0.1:8080"], [("0.0.0.0", 8080)]),
        (["127.0.0.1:8080,0.0.0.0:8080"], [("0.0.0.0", 8080)]),
        (["0.0.0.0:8080", "127.0.0.1:8080"], [("0.0.0.0", 8080)]),
        (["0.0.0.0:8080,127.0.0.1:9090"], [("0.0.0.0", 8080), ("127.0.0.1", 9090)]),
        (["127.0.0.1:1,127.0.0.1:1, 127.0.0.1:1 "], [("127.0.0.1", 1)]),
        (["127.0.0.1:5,127.0.0.2:5"], [("127.0.0.1", 5), ("127.0.0.2", 5)]),
        # IPv6 is a separate family: 0.0.0.0 does not cover it, nor [::] cover IPv4.
        (["0.0.0.0:80,[::1]:80"], [("0.0.0.0", 80), ("::1", 80)]),
        (["[::]:80,127.0.0.1:80"], [("::", 80), ("127.0.0.1", 80)]),
        (["[::]:80,[::]:80"], [("::", 80)]),
        (["[0:0::1]:7,[::1]:7"], [("::1", 7)]),
        ([",,127.0.0.1:3,"], [("127.0.0.1", 3)]),
        (["127.0.0.1:0"], [("127.0.0.1", 0)]),
    ],
)
def test_parse_listen_dedupes(values, expected):
    assert parse_listen(values) == expected


@pytest.mark.parametrize(
    "text",
    [
        "localhost:80",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        ":80",
        "[::1]",
        "::1:80x",
        "127.0.0.1:8o",
        "[::1]:http",
    ],
)
def test_parse_address_refuses(text):
    with pytest.raises(ConfigError, match="invalid listen address"):
        parse_address(text)


def test_parse_address_ipv6_brackets():
    assert parse_address("[::1]:8080") == ("::1", 8080)
    assert parse_address("[FE80::1]:1") == ("fe80::1", 1)


def test_parse_ports():
    assert parse_ports("22, 3000-3999,5432,") == [(22, 22), (3000, 3999), (5432, 5432)]
    assert parse_ports("") == []
    for bad in ("0", "70000", "10-5", "a-b", "1-2-3", "3000-"):
        with pytest.raises(ConfigError):
            parse_ports(bad)


def flags(*argv):
    return docopt(usage(), argv=list(argv))


def test_defaults_match_the_table():
    config = Config.from_sources(flags(), {})
    assert config.listen == [("0.0.0.0", 8080)]
    assert config.upstream_host == "127.0.0.1"
    assert (config.workers, config.log_level) == (1, "INFO")
    assert config.keepalive_timeout == 75 and config.tunnel_idle_timeout is None
    assert config.limits.max_head_bytes == 65536 and config.limits.max_headers == 100
    assert config.max_connections == default_max_connections() >= 16
    assert config.port_allowed(1) and config.port_allowed(65535)


def test_flag_beats_env_beats_default():
    env = {"CMUX_LISTEN": "127.0.0.1:1111", "CMUX_UPSTREAM_HOST": "127.0.0.5", "CMUX_WORKERS": "3"}
    config = Config.from_sources(
        flags("--listen", "127.0.0.1:2222", "--upstream-host", "127.0.0.6"), env
    )
    assert config.listen == [("127.0.0.1", 2222)]
    assert config.upstream_host == "127.0.0.6"
    assert config.workers == 3  # no flag: the environment's
    config = Config.from_sources(flags(), env)
    assert (config.listen, config.upstream_host) == ([("127.0.0.1", 1111)], "127.0.0.5")


def test_repeated_listen_flags_join():
    config = Config.from_sources(
        flags("--listen", "127.0.0.1:1", "--listen=127.0.0.1:2,0.0.0.0:1"), {}
    )
    assert config.listen == [("127.0.0.1", 2), ("0.0.0.0", 1)]


def test_empty_env_value_means_default():
    config = Config.from_sources(flags(), {"CMUX_LISTEN": "", "CMUX_LOG_LEVEL": ""})
    assert config.listen == [("0.0.0.0", 8080)] and config.log_level == "INFO"


def test_every_option_reaches_config():
    argv = [
        "--upstream-host=127.0.0.9",
        "--workers=2",
        "--log-level=debug",
        "--allow-ports=3000-3999",
        "--deny-ports=3001",
        "--max-head-bytes=1000",
        "--max-headers=5",
        "--max-request-line=50",
        "--head-timeout=1.5",
        "--keepalive-timeout=2",
        "--connect-timeout=3",
        "--response-timeout=4",
        "--tunnel-idle-timeout=5",
        "--max-connections=7",
        "--drain-timeout=8",
        "--listen=127.0.0.1:9",
    ]
    assert len(argv) == len(OPTIONS)
    c = Config.from_sources(flags(*argv), {})
    assert (c.upstream_host, c.workers, c.log_level) == ("127.0.0.9", 2, "DEBUG")
    assert c.port_allowed(3000) and not c.port_allowed(3001) and not c.port_allowed(4000)
    assert (c.limits.max_head_bytes, c.limits.max_headers, c.limits.max_request_line) == (
        1000,
        5,
        50,
    )
    assert (c.head_timeout, c.keepalive_timeout, c.connect_timeout) == (1.5, 2, 3)
    assert (c.response_timeout, c.tunnel_idle_timeout, c.max_connections) == (4, 5, 7)
    assert (c.drain_timeout, c.listen) == (8, [("127.0.0.1", 9)])


@pytest.mark.parametrize(
    "override, message",
    [
        ({"log_level": "loud"}, "--log-level"),
        ({"workers": "two"}, "--workers: not a number"),
        ({"head_timeout": "-1"}, "--head-timeout: must not be negative"),
        ({"max_connections": "many"}, "--max-connections"),
        ({"listen": ""}, "no listen address"),
        ({"listen": "example.com:80"}, "host must be an IP literal"),
        ({"allow_ports": "1-99999"}, "invalid port range"),
    ],
)
def test_bad_values_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        Config.defaults(**override)


def test_help_lists_every_option_with_env_and_default():
    text = usage()
    flat = " ".join(text.split())
    for option in OPTIONS:
        assert f"{option.flag}={option.metavar}" in text
        assert f"Env {option.env}; default {option.default or 'none'}." in flat, option.flag
    # docopt must read each option line: the flag ends at two spaces or the line's end.
    for line in text.splitlines():
        if line.startswith("  --") and "=" in line.split()[0]:
            flag = line.split()[0]
            assert line == "  " + flag or line.startswith(f"  {flag}  "), line
