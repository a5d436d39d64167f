"""The daemon as a process: flags and environment, exit codes, drain, logs, imports.

Every process here is started by the test and stopped by its PID. Ports come from
conftest.free_port; "nothing listening" is checked by a refused connection.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time

import pytest
from conftest import REPO, free_port, run_captured, wait_for_port
from integration.upstreams import (
    Upstream,
    Wire,
    described,
    echo_http,
    http_server,
    response,
    routed,
)

from cmux_gevent import __version__
from cmux_gevent.config import OPTIONS

PYTHON = [sys.executable, "-m", "cmux_gevent"]


class Daemon:
    """A daemon started with exactly `args` (no --listen added), stderr to a file."""

    def __init__(self, tmp_path, args, env=None, cmd=PYTHON):
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("CMUX_")}
        full_env.update(env or {})
        stem = tmp_path / f"daemon-{time.monotonic_ns()}"
        self.log_path, self.out_path = stem.with_suffix(".err"), stem.with_suffix(".out")
        with open(self.log_path, "wb") as err, open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                [*cmd, *args], env=full_env, cwd=str(REPO), stdout=out, stderr=err
            )

    def log(self) -> str:
        """What the daemon wrote to stderr (stdout is kept apart, in `out_path`)."""
        return self.log_path.read_text()

    def wait(self, timeout=10) -> int:
        return self.proc.wait(timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def daemon(tmp_path):
    started = []

    def start(*args, env=None, cmd=PYTHON):
        started.append(Daemon(tmp_path, list(args), env, cmd))
        return started[-1]

    yield start
    for d in started:
        d.stop()


def refused(port, host="127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def serving(daemon):
    """serving(*args) -> (daemon, Wire): a daemon on a free port and a client connected to it."""

    def start(*args, **kwargs):
        port = free_port()
        d = daemon("--listen", f"127.0.0.1:{port}", *args, **kwargs)
        wait_for_port("127.0.0.1", port, proc=d.proc)
        d.port = port
        return d, Wire.connect(port)

    return start


def poll(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} not reached within {timeout}s")


def run(*args, env=None, cmd=PYTHON):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CMUX_")}
    full_env.update(env or {})
    return run_captured(
        [*cmd, *args],
        env=full_env,
        cwd=str(REPO),
        timeout=20,
    )


@pytest.mark.timeout(20)
def test_help_lists_every_option_with_env_and_default():
    result = run("--help")
    assert result.returncode == 0
    flat = " ".join(result.stdout.split())
    for option in OPTIONS:
        assert f"{option.flag}={option.metavar}" in result.stdout
        assert f"Env {option.env}; default {option.default or 'none'}." in flat


@pytest.mark.timeout(20)
def test_version():
    result = run("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"cmux-gevent {__version__}")


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "args, message",
    [
        (["--listen", "localhost:80"], "host must be an IP literal"),
        (["--listen", "127.0.0.1:99999"], "invalid listen address"),
        (["--workers", "many"], "--workers: not a number"),
        (["--no-such-flag"], "Usage:"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(args, message):
    result = run(*args)
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.timeout(20)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_port_taken_exits_2_and_leaves_nothing_listening(workers):
    free = free_port()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run("--listen", f"127.0.0.1:{free},127.0.0.1:{port}", "--workers", workers)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "in use" in result.stderr.lower()
    assert refused(free)


@pytest.mark.timeout(20)
def test_listen_dedupe_wildcard_and_loopback_same_port(daemon):
    port = free_port("0.0.0.0")
    d = daemon("--listen", f"0.0.0.0:{port},127.0.0.1:{port}")
    wait_for_port("127.0.0.1", port, proc=d.proc)
    assert d.proc.poll() is None
    assert "in use" not in d.log().lower()


@pytest.mark.timeout(20)
@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this machine")
def test_ipv6_listen_serves(daemon):
    port = free_port("::1")
    d = daemon("--listen", f"[::1]:{port}")
    wait_for_port("::1", port, proc=d.proc)
    with Upstream(echo_http) as up:
        wire = Wire.connect(port, host="::1")
        wire.send(routed("GET", "/v6", up.port))
        assert described(wire.read_response())["target"] == "/v6"


@pytest.mark.timeout(20)
def test_cmux_listen_env_and_flag_wins(daemon):
    env_port, flag_port = free_port(), free_port()
    env = {"CMUX_LISTEN": f"127.0.0.1:{env_port}"}
    d = daemon(env=env)
    wait_for_port("127.0.0.1", env_port, proc=d.proc)
    d.stop()
    d = daemon("--listen", f"127.0.0.1:{flag_port}", env=env)
    wait_for_port("127.0.0.1", flag_port, proc=d.proc)
    assert refused(env_port)


@pytest.mark.timeout(20)
def test_upstream_host_env_and_flag_wins(serving):
    env = {"CMUX_UPSTREAM_HOST": "127.0.0.5"}
    a = Upstream(echo_http, host="127.0.0.5", name="env")
    with a, Upstream(echo_http, host="127.0.0.6", port=a.port, name="flag"):
        for args, expected in [((), "env"), (("--upstream-host", "127.0.0.6"), "flag")]:
            d, wire = serving(*args, env=env)
            wire.send(routed("GET", "/", a.port))
            assert described(wire.read_response())["server"] == expected


@pytest.mark.timeout(30)
def test_sigterm_drains_in_flight_request_and_exits_0(serving):
    release = threading.Event()

    def slow(req, wire, upstream):
        assert release.wait(10)
        wire.send(response(200, [], b"finished after drain began"))

    with Upstream(http_server(slow)) as up:
        d, wire = serving()
        wire.send(routed("GET", "/slow", up.port))
        poll(lambda: up.requests, what="request reached the upstream")
        d.proc.send_signal(signal.SIGTERM)
        poll(lambda: refused(d.port), what="listener closed on SIGTERM")
        assert d.proc.poll() is None  # still draining the slow request
        release.set()
        msg = wire.read_response()
        assert (msg.status, msg.body) == (200, b"finished after drain began")
        assert msg.get("connection") == "close"
        assert d.wait(10) == 0


@pytest.mark.timeout(30)
def test_idle_keepalive_connection_does_not_hold_up_exit(serving):
    with Upstream(echo_http) as up:
        d, wire = serving("--keepalive-timeout", "60")
        wire.send(routed("GET", "/", up.port))
        assert wire.read_response().status == 200  # now idle, kept alive
        started = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        assert d.wait(10) == 0
        elapsed = time.monotonic() - started
        assert elapsed < 3, f"exit took {elapsed:.1f}s with an idle keep-alive client"
        assert wire.at_eof()


@pytest.mark.timeout(20)
def test_one_access_log_line_per_request(serving):
    with Upstream(echo_http) as up:
        d, wire = serving()
        wire.send(routed("GET", "/a?b=1", up.port))
        size = len(wire.read_response().body)
        wire.send(routed("POST", "/p", up.port, [("Content-Length", "2")], b"hi"))
        wire.read_response()
        bad = Wire.connect(d.port)
        bad.send(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        assert bad.read_response().status == 400

        def lines():
            return [line for line in d.log().splitlines() if " client=" in line]

        poll(lambda: len(lines()) >= 3, what="three access-log lines")
        d.stop()
        logged = lines()
    assert len(logged) == 3, logged
    assert "client=" not in d.out_path.read_text()  # the access log goes to stderr only
    pattern = (
        rf"client=127\.0\.0\.1 method=GET path=/a\?b=1 port={up.port} upstream=127\.0\.0\.1 "
        rf"status=200 bytes={size} ms=\d+$"
    )
    assert re.search(pattern, logged[0]), logged[0]
    assert re.search(rf"method=POST path=/p port={up.port} .*status=200", logged[1])
    assert re.search(
        r"method=GET path=/nope port=- upstream=- status=400 bytes=0 ms=\d+", logged[2]
    )
    assert "missing required header" in logged[2]


@pytest.mark.timeout(20)
def test_importing_cmux_gevent_patches_nothing():
    code = (
        "import cmux_gevent, cmux_gevent.cli, cmux_gevent.connection, cmux_gevent.server\n"
        "import gevent.monkey\n"
        "assert not gevent.monkey.is_module_patched('socket')\n"
        "assert not gevent.monkey.is_module_patched('threading')\n"
        "import socket, gevent.socket\n"
        "assert socket.socket is not gevent.socket.socket\n"
        "print('unpatched')\n"
    )
    result = run_captured(
        [sys.executable, "-c", code],
        cwd=str(REPO),
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "unpatched"


def console_script():
    """The installed `cmux-gevent`: on PATH, or in this interpreter's scripts directory."""
    path = os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")])
    return shutil.which("cmux-gevent", path=path)


@pytest.mark.timeout(20)
@pytest.mark.skipif(console_script() is None, reason="cmux-gevent is not installed (pip install .)")
def test_installed_console_script_serves(serving):
    script = console_script()
    assert run("--version", cmd=[script]).stdout.strip() == f"cmux-gevent {__version__}"
    with Upstream(echo_http) as up:
        d, wire = serving(cmd=[script])
        wire.send(routed("GET", "/via-script", up.port))
        assert described(wire.read_response())["target"] == "/via-script"
        d.proc.send_signal(signal.SIGTERM)
        assert d.wait(10) == 0


@pytest.mark.timeout(20)
def test_access_lines_still_buffered_are_written_on_sigterm(serving):
    with Upstream(echo_http) as up:
        d, wire = serving()
        for path in ("/1", "/2", "/3"):
            wire.send(routed("GET", path, up.port))
            assert wire.read_response().status == 200
        d.proc.send_signal(signal.SIGTERM)  # at once: the batch has not been flushed yet
        assert d.wait(10) == 0
    logged = [line for line in d.log().splitlines() if " client=" in line]
    assert [re.search(r"path=(\S+)", line).group(1) for line in logged] == ["/1", "/2", "/3"]
