"""Shared fixtures: a real cmux-gevent process on a free loopback port, the
LD_PRELOAD shim, and background processes that are always stopped.

Tests talk to it over real sockets; upstreams are real servers started by the
tests themselves. Every wait is bounded (pytest-timeout on the tests, deadlines
in the helpers here).
"""

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PRELOAD_DIR = REPO / "preload"


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def port_free(host: str, port: int) -> bool:
    """Bindable the way a dev server binds (SO_REUSEADDR): TIME_WAIT does not count."""
    with socket.socket(_family(host)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(*hosts: str, preferred: int = 0) -> int:
    """A port nothing listens on right now on every one of `hosts` (default
    127.0.0.1): `preferred` if it is free, else one the kernel picks for the first."""
    hosts = hosts or ("127.0.0.1",)
    if preferred and all(port_free(host, preferred) for host in hosts):
        return preferred
    for _ in range(100):
        with socket.socket(_family(hosts[0])) as sock:
            sock.bind((hosts[0], 0))
            port = sock.getsockname()[1]
        if all(port_free(host, port) for host in hosts[1:]):
            return port
    raise RuntimeError(f"no port free on all of {hosts}")


def can_connect(host: str, port: int) -> bool:
    """Whether host:port accepts a connection now."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return False
    return True


def wait_for_port(host: str, port: int, timeout: float = 10.0, proc=None) -> None:
    """Poll until host:port accepts a connection; fails at once if `proc` exits,
    with the tail of whatever it printed to pipes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise RuntimeError(
                f"process exited with {proc.returncode} before listening: "
                f"{(out or '')[-2000:]!r} {(err or '')[-2000:]!r}"
            )
        if can_connect(host, port):
            return
        time.sleep(0.02)
    raise TimeoutError(f"{host}:{port} did not accept connections within {timeout}s")


def wait_until(condition, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll `condition()` until it is true or `timeout` passes; its last value."""
    deadline = time.monotonic() + timeout
    while not (done := condition()) and time.monotonic() < deadline:
        time.sleep(interval)
    return done


def run_captured(argv, timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
    """Run a command to completion with its output captured as text; the caller
    checks the exit code (so that a failure shows the output)."""
    kwargs.setdefault("check", False)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)


def http_get(host: str, port: int, path: str = "/", headers=None):
    """(status, body) of one GET on a fresh connection."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


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


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    """A daemon with default settings shared by a module's tests (one costs ~0.3 s)."""
    daemon = ProxyProcess([], log_path=tmp_path_factory.mktemp("proxy") / "proxy.log")
    yield daemon
    daemon.stop()


def base_env(**extra) -> dict:
    """os.environ without any CMUX_*/LD_PRELOAD, with a workspace root that
    cannot contain the test's working directory; `extra` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMUX_") and k != "LD_PRELOAD"}
    env["CMUX_WORKSPACE_ROOT"] = "/nonexistent-cmux-workspace-root"
    env.update(extra)
    return env


def shim_env(lib: str, workspace=None, **extra) -> dict:
    """base_env() with the shim preloaded and, if given, CMUX_WORKSPACE_INTERNAL."""
    env = base_env(LD_PRELOAD=lib, **extra)
    if workspace is not None:
        env["CMUX_WORKSPACE_INTERNAL"] = workspace
    return env


@pytest.fixture(scope="session")
def shim():
    """Builds the shim with `make -C preload`; a failed build fails the test."""
    build = run_captured(["make", "-C", str(PRELOAD_DIR)], timeout=120)
    assert build.returncode == 0, f"make -C preload failed:\n{build.stdout}{build.stderr}"
    lib = PRELOAD_DIR / "libworkspace_net.so"
    assert lib.is_file()
    return str(lib)


@pytest.fixture
def procs():
    """Factory: procs(argv, **popen_kwargs) -> Popen (stdout/stderr piped); each
    one is sent SIGTERM at teardown (SIGKILL if that takes over 10 s)."""
    started = []

    def start(argv, **kwargs):
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        started.append(subprocess.Popen(argv, **kwargs))
        return started[-1]

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)
