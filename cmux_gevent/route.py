"""Choosing the upstream for a request, exactly as cmux-proxy does, plus policy.

`route(head, config)` returns a Target or raises a ProxyError whose reason is the
text the client sees. No sockets, no DNS; the only state is the bounded memo of
decisions already taken, kept on the Config.
"""

import ipaddress
from typing import Optional, Tuple

from .config import show_address
from .errors import ClientError
from .head import PORT_HEADER, WORKSPACE_HEADER, Head
from .workspace import InvalidWorkspace, workspace_ip

LOCALHOST_SUFFIX = ".localhost"
LOCALHOST_BYTES = LOCALHOST_SUFFIX.encode()
POLICY_HEADERS = ((b"X-Cmux-Error", b"blocked-by-policy"),)


#: How many routing decisions a Config remembers (see `route`); then it starts over.
TARGETS_KEPT = 4096
#: Decisions on longer field values are taken but not remembered: the memo stays small.
REMEMBERED_KEY_MAX = 512


class Target:
    """Where a request goes: upstream `host`:`port`, and the workspace that chose host.

    Built once per distinct routing field values and reused (see `route`), so it
    also carries the names the error texts, a missing Host header and the access
    log write.
    """

    __slots__ = ("host", "port", "workspace", "name", "log_name")

    def __init__(self, host: str, port: int, workspace: Optional[str]):
        self.host = host
        self.port = port
        self.workspace = workspace
        self.name = show_address((host, port))
        self.log_name = b"port=%d upstream=%s" % (port, host.encode())

    def __repr__(self):
        return f"Target({self.name}, workspace={self.workspace!r})"


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ClientError(400, "invalid header value (not UTF-8)") from None


def parse_port(text: str) -> Optional[int]:
    """A TCP port 1..65535 written in ASCII digits (leading zeros allowed), or None."""
    if not text.isascii() or not text.isdigit():
        return None
    digits = text.lstrip("0")
    if len(digits) > 5:  # also keeps int() off numbers of thousands of digits
        return None
    port = int(digits or "0")
    return port if 0 < port < 65536 else None


def host_route(host: Optional[bytes]) -> Tuple[Optional[str], Optional[int]]:
    """(workspace, port) from `Host: <workspace>-<port>.localhost[:p]`, else (None, None)."""
    if not host or LOCALHOST_BYTES not in host.lower():  # the usual case, in one C call
        return None, None
    try:
        name = host.decode("ascii").strip()
    except UnicodeDecodeError:
        return None, None
    if not name.startswith("["):
        name = name.rsplit(":", 1)[0] if ":" in name else name
    if not name.lower().endswith(LOCALHOST_SUFFIX):
        return None, None
    workspace, sep, port_text = name[: -len(LOCALHOST_SUFFIX)].rpartition("-")
    port = parse_port(port_text)
    if not sep or not workspace or port is None:
        return None, None
    return workspace, port


def _port(raw: Optional[bytes], host_port: Optional[int]) -> int:
    if raw is None:
        if host_port is None:
            raise ClientError(400, "missing required header: X-Cmux-Port-Internal")
        return host_port
    text = _text(raw)
    if not text:
        raise ClientError(400, "header value cannot be empty")
    port = parse_port(text)
    if port is None:
        raise ClientError(400, "invalid port in X-Cmux-Port-Internal")
    return port


def _workspace(raw: bytes) -> str:
    text = _text(raw)
    if not text:
        raise ClientError(400, "X-Cmux-Workspace-Internal cannot be empty")
    return text


def route(head: Head, config) -> Target:
    """The upstream for `head` (in origin-form): headers first, the Host route for the rest.

    A decision depends on three field values only, so a Target once let through is
    remembered under them: the usual request costs three lookups and a dict hit.
    """
    key = (head.get(b"host"), head.get(PORT_HEADER), head.get(WORKSPACE_HEADER))
    target = config.targets.get(key)
    return _decide(key, config) if target is None else target


def _decide(key, config) -> Target:
    """A new Target for these field values: refused with 400 (fields) or 403/508
    (policy), else remembered."""
    target = _target(*_workspace_and_port(key), config)
    check_policy(target, config)
    if sum(len(value) for value in key if value) <= REMEMBERED_KEY_MAX:
        if len(config.targets) >= TARGETS_KEPT:
            config.targets.clear()
        config.targets[key] = target
    return target


def _workspace_and_port(key) -> Tuple[Optional[str], int]:
    """What the Host, port and workspace fields ask for; workspace None: no workspace."""
    host, raw_port, raw_workspace = key
    host_workspace, host_port = host_route(host)
    port = _port(raw_port, host_port)
    workspace = host_workspace if raw_workspace is None else _workspace(raw_workspace)
    return workspace, port


def _target(workspace: Optional[str], port: int, config) -> Target:
    if workspace is None:
        return Target(config.upstream_host, port, None)
    try:
        return Target(workspace_ip(workspace), port, workspace)
    except InvalidWorkspace:
        raise ClientError(400, f"invalid workspace name: {workspace}") from None


def origin_form(head: Head, listen) -> Head:
    """`head`, or for `http://authority/path` a new head for `/path` with `Host: authority`.

    Absolute-form is accepted only when the authority names this proxy: a
    `<ws>-<port>.localhost` route or one of our listen addresses. Anything else
    would make us an open forward proxy, so it is a 400. As RFC 9112 3.2.2
    requires, the authority replaces any Host header the client sent.
    """
    if head.method == b"CONNECT" or head.target[:1] in (b"/", b"*"):
        return head
    rest = head.target[len(b"http://") :]
    cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:]
    if not _names_us(authority, listen):
        raise ClientError(400, "bad request: request target must be a path or name this proxy")
    target = path if path.startswith(b"/") else b"/" + path
    headers = [(n, v) for n, v in head.headers if n.lower() != b"host"]
    headers.append((b"Host", authority))
    return Head(head.method, target, head.version, headers, head.keep_alive, head.upgrade)


def _names_us(authority: bytes, listen) -> bool:
    if b"@" in authority:  # userinfo: never ours, and a classic way to disguise a host
        return False
    if host_route(authority) != (None, None):
        return True
    try:
        host, sep, port = authority.decode("ascii").rpartition(":")
    except UnicodeDecodeError:
        return False
    if not sep:
        host, port = authority.decode("ascii"), "80"
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = parse_port(port)
    return number is not None and is_own_listener(host, number, listen)


def check_policy(target: Target, config) -> None:
    """Refuse ports outside the allow/deny policy and requests that would loop back to us."""
    if not config.port_allowed(target.port):
        raise ClientError(403, f"port {target.port} blocked by policy", POLICY_HEADERS)
    if target.port in config.listen_ports and is_own_listener(  # parse only on a port match
        target.host, target.port, config.listen
    ):
        raise ClientError(508, "routing loop")


def is_own_listener(host: str, port: int, listen) -> bool:
    """Whether `host`:`port` reaches one of our own listen sockets."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    for listen_host, listen_port in listen:
        if listen_port != port:
            continue
        bound = ipaddress.ip_address(listen_host)
        if bound == address or (bound.is_unspecified and bound.version == address.version):
            return True
        if bound.is_unspecified and address.is_loopback:
            return True
    return False
