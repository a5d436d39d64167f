"""Shared fixtures: a real cmux-gevent process on a free loopback port.

Tests talk to it over real sockets; upstreams are real servers started by the
tests themselves. Every wait is bounded (pytest-timeout on the tests, deadlines
in the helpers here).
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (bind to 0 and release it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 10.0, proc=None) -> None:
    """Poll until host:port accepts a connection (or the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"{host}:{port} did not accept connections within {timeout}s")


class ProxyProcess:
    """A running daemon: `port`, `url`, its Popen, and its stderr log."""

    def __init__(self, args, env=None, log_path=None, cmd=None):
        self.port = free_port()
        self.host = "127.0.0.1"
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = dict(os.environ)
        full_env.pop("CMUX_LISTEN", None)
        full_env.update(env or {})
        cmd = cmd or [sys.executable, "-m", "cmux_gevent"]
        self.argv = [*cmd, "--listen", f"127.0.0.1:{self.port}", *args]
        # The child holds its own copy of the descriptor: ours can close at once.
        with open(log_path or os.devnull, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, env=full_env, cwd=str(REPO), stdout=log, stderr=log
            )
        wait_for_port(self.host, self.port, proc=self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return Path(self.log_path).read_text() if self.log_path else ""

    def stop(self, sig=signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


@pytest.fixture
def start_proxy(tmp_path):
    """Factory: start_proxy(*args, env={...}) -> ProxyProcess, stopped at teardown."""
    started = []

    def start(*args, env=None, cmd=None):
        proxy = ProxyProcess(
            list(args), env=env, log_path=tmp_path / f"proxy{len(started)}.log", cmd=cmd
        )
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def proxy(start_proxy):
    """A daemon with default settings on a free port."""
    return start_proxy()
