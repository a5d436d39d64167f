"""Settings: every option with its environment variable, default and parser.

`OPTIONS` is the single table the CLI's --help, the README's options table and
`Config.from_sources` are built from. Flags beat environment variables, which
beat defaults. Pure: nothing here opens a socket.
"""

import ipaddress
import resource
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

from .parser import Limits

Address = Tuple[str, int]


class ConfigError(ValueError):
    """A setting that cannot be used; the CLI exits with status 2."""


class Option(NamedTuple):
    flag: str
    metavar: str
    env: str
    default: str
    help: str

    @property
    def key(self) -> str:
        """The attribute name: --max-head-bytes -> max_head_bytes."""
        return self.flag[2:].replace("-", "_")


OPTIONS: List[Option] = [
    Option(
        "--listen",
        "ADDR",
        "CMUX_LISTEN",
        "0.0.0.0:8080,127.0.0.1:8080",
        "Address to listen on; repeatable and comma-separated. [::]:P for IPv6.",
    ),
    Option(
        "--upstream-host",
        "HOST",
        "CMUX_UPSTREAM_HOST",
        "127.0.0.1",
        "Upstream host when the request names no workspace.",
    ),
    Option(
        "--workers",
        "N",
        "CMUX_WORKERS",
        "1",
        "Worker processes sharing the listen sockets (SO_REUSEPORT).",
    ),
    Option(
        "--log-level",
        "LEVEL",
        "CMUX_LOG_LEVEL",
        "info",
        "debug, info (one access-log line per request), warning or error.",
    ),
    Option(
        "--allow-ports",
        "PORTS",
        "CMUX_ALLOW_PORTS",
        "1-65535",
        "Upstream ports that may be reached, e.g. 3000-3999,5432.",
    ),
    Option(
        "--deny-ports",
        "PORTS",
        "CMUX_DENY_PORTS",
        "",
        "Upstream ports that are refused (403), e.g. 22,25.",
    ),
    Option(
        "--max-head-bytes",
        "BYTES",
        "CMUX_MAX_HEAD_BYTES",
        "65536",
        "Largest request head; larger gets 431.",
    ),
    Option(
        "--max-headers",
        "N",
        "CMUX_MAX_HEADERS",
        "100",
        "Most header fields in a request; more gets 431.",
    ),
    Option(
        "--max-request-line",
        "BYTES",
        "CMUX_MAX_REQUEST_LINE",
        "8192",
        "Longest request target; longer gets 414.",
    ),
    Option(
        "--head-timeout",
        "SECS",
        "CMUX_HEAD_TIMEOUT",
        "30",
        "Time a client has to send a complete request head.",
    ),
    Option(
        "--keepalive-timeout",
        "SECS",
        "CMUX_KEEPALIVE_TIMEOUT",
        "75",
        "Idle time allowed between requests on a client connection.",
    ),
    Option(
        "--connect-timeout",
        "SECS",
        "CMUX_CONNECT_TIMEOUT",
        "5",
        "Time to establish an upstream connection.",
    ),
    Option(
        "--response-timeout",
        "SECS",
        "CMUX_RESPONSE_TIMEOUT",
        "300",
        "Time for an upstream to send its response head (dev servers compile).",
    ),
    Option(
        "--tunnel-idle-timeout",
        "SECS",
        "CMUX_TUNNEL_IDLE_TIMEOUT",
        "0",
        "Close WebSocket/CONNECT tunnels idle this long; 0 = never.",
    ),
    Option(
        "--max-connections",
        "N",
        "CMUX_MAX_CONNECTIONS",
        "auto",
        "Concurrent client connections; auto = sized from the fd limit.",
    ),
    Option(
        "--drain-timeout",
        "SECS",
        "CMUX_DRAIN_TIMEOUT",
        "10",
        "On SIGTERM, how long in-flight requests may take to finish.",
    ),
]


def parse_listen(values: List[str]) -> List[Address]:
    """Listen addresses, deduplicated: 0.0.0.0:P covers every IPv4 address on port P."""
    addresses: List[Address] = []
    for value in values:
        for item in value.split(","):
            if item.strip():
                addresses.append(parse_address(item.strip()))
    wildcard_ports = {port for host, port in addresses if host == "0.0.0.0"}
    result: List[Address] = []
    for host, port in addresses:
        covered = host != "0.0.0.0" and ":" not in host and port in wildcard_ports
        if not covered and (host, port) not in result:
            result.append((host, port))
    return result


def show_address(address: Address) -> str:
    """`host:port`, or `[v6]:port`: how logs and errors write an address."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str) -> Address:
    """`HOST:PORT` or `[V6]:PORT` with a literal IP address."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ConfigError(f"invalid listen address {text!r}: expected HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"invalid listen address {text!r}: host must be an IP literal") from None
    return str(ip), int(port_text)


def parse_ports(text: str) -> List[Tuple[int, int]]:
    """`22,3000-3999` as inclusive ranges."""
    ranges = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        low, dash, high = item.partition("-")
        try:  # "3000-" is a typo, not port 3000: int("") refuses it
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise ConfigError(f"invalid port list {text!r}") from None
        if not 0 < first <= last < 65536:
            raise ConfigError(f"invalid port range {item!r} in {text!r}")
        ranges.append((first, last))
    return ranges


def _positive(name: str, text: str, parse: Callable = int):
    try:
        value = parse(text)
    except ValueError:
        raise ConfigError(f"{name}: not a number: {text!r}") from None
    if value < 0:
        raise ConfigError(f"{name}: must not be negative: {text!r}")
    return value


def default_max_connections() -> int:
    """Half the fd limit (a client and its upstream each hold one), less a reserve."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, (soft - 32) // 2)


class Config:
    """Resolved settings for one proxy process."""

    def __init__(self, values: Mapping[str, str]):
        v = dict(values)
        self.listen = parse_listen([v["listen"]])
        if not self.listen:
            raise ConfigError("no listen address")
        self.listen_ports = frozenset(port for _, port in self.listen)
        self.targets: Dict = {}  # route.py's memo: (Host, port, workspace) values -> Target
        self.upstream_host = v["upstream_host"]
        self.workers = _positive("--workers", v["workers"]) or 1
        self.log_level = v["log_level"].upper()
        if self.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"--log-level: unknown level {v['log_level']!r}")
        self.allow_ports = parse_ports(v["allow_ports"])
        self.deny_ports = parse_ports(v["deny_ports"])
        self._ports = self._port_table()
        self.limits = Limits(
            _positive("--max-head-bytes", v["max_head_bytes"]),
            _positive("--max-headers", v["max_headers"]),
            _positive("--max-request-line", v["max_request_line"]),
        )
        timeouts = [o for o in OPTIONS if o.metavar == "SECS"]
        seconds = {o.key: _positive(o.flag, v[o.key], float) for o in timeouts}
        self.head_timeout = seconds["head_timeout"]
        self.keepalive_timeout = seconds["keepalive_timeout"]
        self.connect_timeout = seconds["connect_timeout"]
        self.response_timeout = seconds["response_timeout"]
        self.tunnel_idle_timeout = seconds["tunnel_idle_timeout"] or None  # 0: no limit
        self.drain_timeout = seconds["drain_timeout"]
        max_conn = v["max_connections"]
        self.max_connections = (
            default_max_connections()
            if max_conn == "auto"
            else _positive("--max-connections", max_conn)
        )

    def port_allowed(self, port: int) -> bool:
        return bool(self._ports[port])

    def _port_table(self) -> bytearray:
        """One byte per port, 1 = allowed: the per-request check is an index."""
        table = bytearray(65536)
        for low, high in self.allow_ports:
            table[low : high + 1] = b"\x01" * (high - low + 1)
        for low, high in self.deny_ports:
            table[low : high + 1] = bytes(high - low + 1)
        return table

    @classmethod
    def from_sources(
        cls, flags: Mapping[str, Optional[List[str]]], environ: Mapping[str, str]
    ) -> "Config":
        """Flags (docopt's dict; repeatable flags as lists) over environment over defaults."""
        values: Dict[str, str] = {}
        for option in OPTIONS:
            given = flags.get(option.flag)
            if isinstance(given, list):
                given = ",".join(given) if given else None
            if given is None:
                given = environ.get(option.env) or option.default
            values[option.key] = given
        return cls(values)

    @classmethod
    def defaults(cls, **overrides: str) -> "Config":
        """Defaults with some values replaced (keys as attribute names), for embedding and tests."""
        values = {o.key: o.default for o in OPTIONS}
        values.update({k: str(v) for k, v in overrides.items()})
        return cls(values)
