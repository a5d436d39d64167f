"""`cmux-gevent run / ip / preload-path`, driven as `python -m cmux_gevent`
subprocesses, and a dev server started with `cmux-gevent run` reached through
the proxy daemon by X-Cmux-Workspace-Internal.
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

from cmux_gevent.workspace import workspace_ip

REPO = Path(__file__).resolve().parents[2]
PRELOAD_DIR = REPO / "preload"


@pytest.fixture(scope="module")
def shim():
    build = subprocess.run(
        ["make", "-C", str(PRELOAD_DIR)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, f"make -C preload failed:\n{build.stdout}{build.stderr}"
    return str(PRELOAD_DIR / "libworkspace_net.so")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMUX_") and k != "LD_PRELOAD"}
    env["CMUX_WORKSPACE_ROOT"] = "/nonexistent-cmux-workspace-root"
    # `python -m cmux_gevent` must import the package from this tree.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def cli(*args, timeout=30, **env):
    return subprocess.run(
        [sys.executable, "-m", "cmux_gevent", *args],
        cwd=REPO,
        env=clean_env(**env),
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port(*ips):
    for _ in range(100):
        with socket.socket() as s:
            s.bind((ips[0], 0))
            port = s.getsockname()[1]
        ok = True
        for ip in ips:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((ip, port))
                except OSError:
                    ok = False
        if ok:
            return port
    raise RuntimeError("no free port")


def wait_listening(ip, port, proc, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"process exited with {proc.returncode}: {out!r} {err!r}")
        try:
            socket.create_connection((ip, port), timeout=2).close()
            return
        except ConnectionRefusedError:
            time.sleep(0.02)
    pytest.fail(f"{ip}:{port} not listening after {timeout}s")


@pytest.fixture
def procs():
    started = []

    def start(argv, **kw):
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        p = subprocess.Popen(argv, **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.terminate()
            try:
                p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate(timeout=10)


@pytest.mark.timeout(30)
def test_ip():
    r = cli("ip", "workspace-7")
    assert (r.returncode, r.stdout) == (0, "127.18.0.7\n"), r.stderr
    r = cli("ip", "/root/workspace-abc")
    assert r.stdout.strip() == workspace_ip("workspace-abc")
    r = cli("ip", "workspace-4294967296")
    assert r.returncode != 0
    assert "invalid workspace" in r.stderr


@pytest.mark.timeout(30)
def test_preload_path(shim):
    r = cli("preload-path")
    assert r.returncode == 0, r.stderr
    path = r.stdout.strip()
    assert os.path.isabs(path) and os.path.isfile(path)
    assert os.path.basename(path) == "libworkspace_net.so"
    r = cli("preload-path", CMUX_PRELOAD_LIB=shim)
    assert r.stdout.strip() == shim


@pytest.mark.timeout(30)
def test_run_binds_on_the_workspace_and_passes_the_exit_code(shim):
    code = (
        "import os, socket, sys\n"
        "s = socket.socket(); s.bind(('0.0.0.0', 0))\n"
        "print(s.getsockname()[0], os.environ['CMUX_WORKSPACE_INTERNAL'])\n"
        "sys.exit(5)\n"
    )
    r = cli("run", "workspace-4191", "--", sys.executable, "-c", code)
    assert r.returncode == 5, r.stderr
    assert r.stdout.split() == [workspace_ip("workspace-4191"), "workspace-4191"]


@pytest.mark.timeout(30)
def test_run_signal_death_and_missing_command(shim, tmp_path):
    r = cli("run", "workspace-4192", "--", "sh", "-c", "kill -TERM $$")
    assert r.returncode == 128 + signal.SIGTERM, r.stderr
    r = cli("run", "workspace-4192", "--", str(tmp_path / "missing"))
    assert r.returncode == 127
    assert "not found" in r.stderr


@pytest.mark.timeout(30)
def test_run_refuses_an_invalid_workspace(shim):
    r = cli("run", "workspace-4294967296", "--", "true")
    assert r.returncode == 2
    assert "invalid workspace" in r.stderr


@pytest.mark.timeout(60)
def test_server_started_with_run_is_reached_through_the_proxy(shim, procs, tmp_path):
    """`cmux-gevent run workspace-7 -- python3 -m http.server P --bind 127.0.0.1`
    listens on 127.18.0.7:P only; the daemon reaches it for
    X-Cmux-Workspace-Internal: workspace-7 and not for another workspace."""
    ws_ip = workspace_ip("workspace-7")
    upstream_port = free_port("127.0.0.1", ws_ip, workspace_ip("workspace-8"))
    proxy_port = free_port("127.0.0.1")
    site = tmp_path / "site"
    site.mkdir()
    (site / "who.txt").write_text("workspace-7 says hi\n")

    server = procs(
        [
            sys.executable,
            "-m",
            "cmux_gevent",
            "run",
            "workspace-7",
            "--",
            sys.executable,
            "-m",
            "http.server",
            str(upstream_port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(site),
        ],
        cwd=REPO,
        env=clean_env(),
    )
    daemon = procs(
        [
            sys.executable,
            "-m",
            "cmux_gevent",
            "--listen",
            f"127.0.0.1:{proxy_port}",
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        env=clean_env(),
    )
    wait_listening(ws_ip, upstream_port, server)
    wait_listening("127.0.0.1", proxy_port, daemon)
    # The dev server is not on the host-wide loopback.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", upstream_port), timeout=5).close()

    def via_proxy(workspace):
        conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=20)
        try:
            conn.request(
                "GET",
                "/who.txt",
                headers={
                    "X-Cmux-Workspace-Internal": workspace,
                    "X-Cmux-Port-Internal": str(upstream_port),
                },
            )
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    assert via_proxy("workspace-7") == (200, "workspace-7 says hi\n")
    status, _ = via_proxy("workspace-8")
    assert status >= 500  # nothing listens in workspace-8

    # SIGTERM to `cmux-gevent run` reaches the dev server.
    server.send_signal(signal.SIGTERM)
    server.communicate(timeout=20)
    assert server.returncode == 128 + signal.SIGTERM
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((ws_ip, upstream_port), timeout=5).close()
