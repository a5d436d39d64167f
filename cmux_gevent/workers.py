"""Running the proxy: one process, or N supervised workers sharing each address.

With `--workers N` the parent binds N listening sockets per address with
SO_REUSEPORT (the kernel spreads connections across them), forks one worker per
socket set and restarts any worker that dies. SIGTERM/SIGINT are forwarded so
every worker drains; the parent exits 0 once they all have.
"""

import logging
import os
import signal
import sys
import time

import gevent

from .config import Config, show_address
from .server import BindError, ProxyServer, bind_all

log = logging.getLogger("cmux_gevent")
RESTART_DELAY = 0.5  # a worker that crashes at start must not become a fork loop


def serve_config(config: Config) -> int:
    """Bind everything (or nothing), then serve; 0 after a clean drain, 2 if binding failed."""
    try:
        socket_sets = [
            bind_all(config.listen, reuse_port=config.workers > 1) for _ in range(config.workers)
        ]
    except BindError as exc:
        print(f"cmux-gevent: {exc.strerror}", file=sys.stderr)
        return 2
    log.info(
        "cmux-gevent listening on %s (upstream host %s, %d worker(s))",
        ", ".join(show_address(a) for a in config.listen),
        config.upstream_host,
        config.workers,
    )
    if config.workers == 1:
        ProxyServer(config, socket_sets[0]).serve_forever()
        return 0
    return Supervisor(config, socket_sets).run()


class Supervisor:
    """The parent of the workers: forks, restarts, forwards signals, reaps."""

    def __init__(self, config: Config, socket_sets):
        self.config = config
        self.socket_sets = socket_sets
        self.children = {}  # pid -> worker index
        self.stopping = False
        self._handlers = []

    def run(self) -> int:
        for index in range(len(self.socket_sets)):
            self._spawn(index)
        self._handlers = [
            gevent.signal_handler(signum, self._forward, signum)
            for signum in (signal.SIGTERM, signal.SIGINT)
        ]
        while self.children:
            pid, status = os.waitpid(-1, 0)
            index = self.children.pop(pid, None)
            if index is None or self.stopping:
                continue
            log.warning("worker %d (pid %d) exited with status %d; restarting", index, pid, status)
            time.sleep(RESTART_DELAY)
            self._spawn(index)
        return 0

    def _spawn(self, index: int) -> None:
        pid = os.fork()
        if pid:
            self.children[pid] = index
            return
        for handler in self._handlers:  # the parent's handlers must not run in a worker
            handler.cancel()
        for other, sockets in enumerate(self.socket_sets):
            if other != index:
                for sock in sockets:
                    sock.close()
        try:
            ProxyServer(self.config, self.socket_sets[index]).serve_forever()
        finally:
            os._exit(0)

    def _forward(self, signum) -> None:
        """First signal: every worker drains. Second: they exit at once (their own rule)."""
        self.stopping = True
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
