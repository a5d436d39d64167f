"""`cmux-gevent run / ip / preload-path`, driven as `python -m cmux_gevent`
subprocesses, and a dev server started with `cmux-gevent run` reached through
the proxy daemon by X-Cmux-Workspace-Internal.
"""

import os
import signal
import socket
import sys

import pytest
from conftest import REPO, base_env, free_port, http_get, run_captured, wait_for_port

from cmux_gevent.workspace import workspace_ip


def clean_env(**extra):
    """base_env() from which `python -m cmux_gevent` imports the package in this tree."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return base_env(PYTHONPATH=path, **extra)


def cmux(*args):
    return [sys.executable, "-m", "cmux_gevent", *args]


def cli(*args, timeout=30, **env):
    return run_captured(cmux(*args), cwd=REPO, env=clean_env(**env), timeout=timeout)


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

    http_server = [sys.executable, "-m", "http.server", str(upstream_port), "--bind", "127.0.0.1"]
    server = procs(
        cmux("run", "workspace-7", "--", *http_server, "--directory", str(site)),
        cwd=REPO,
        env=clean_env(),
    )
    listen = f"127.0.0.1:{proxy_port}"
    daemon = procs(cmux("--listen", listen, "--log-level", "warning"), cwd=REPO, env=clean_env())
    wait_for_port(ws_ip, upstream_port, 30, server)
    wait_for_port("127.0.0.1", proxy_port, 30, daemon)
    # The dev server is not on the host-wide loopback.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", upstream_port), timeout=5).close()

    def via_proxy(workspace):
        routing = {
            "X-Cmux-Workspace-Internal": workspace,
            "X-Cmux-Port-Internal": str(upstream_port),
        }
        return http_get("127.0.0.1", proxy_port, "/who.txt", routing)

    assert via_proxy("workspace-7") == (200, b"workspace-7 says hi\n")
    status, _ = via_proxy("workspace-8")
    assert status >= 500  # nothing listens in workspace-8

    # SIGTERM to `cmux-gevent run` reaches the dev server.
    server.send_signal(signal.SIGTERM)
    server.communicate(timeout=20)
    assert server.returncode == 128 + signal.SIGTERM
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((ws_ip, upstream_port), timeout=5).close()
