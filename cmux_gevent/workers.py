"""Running the proxy: one process, or N workers sharing each address via SO_REUSEPORT."""

import logging
import sys

from .config import Config
from .server import BindError, ProxyServer, bind_all

log = logging.getLogger("cmux_gevent")


def serve_config(config: Config) -> int:
    """Bind, serve until a signal has drained us; 0 on a clean exit, 2 if binding failed."""
    try:
        sockets = bind_all(config.listen, reuse_port=config.workers > 1)
    except BindError as exc:
        print(f"cmux-gevent: {exc.strerror}", file=sys.stderr)
        return 2
    server = ProxyServer(config, sockets)
    log.info(
        "cmux-gevent listening on %s (upstream host %s)",
        ", ".join(_shown(a) for a in config.listen),
        config.upstream_host,
    )
    server.serve_forever()
    return 0


def _shown(address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
