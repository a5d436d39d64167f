"""The single-file daemon: `python -m cmux_gevent.build` makes a shiv zipapp that
runs on a Python where nothing was installed, routes requests, and carries a
shim that works as LD_PRELOAD once shiv has extracted it.

Set CMUX_PYZ to test a prebuilt zipapp instead of building one (the build
downloads gevent, httptools and docopt-ng wheels with pip).
"""

import http.client
import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import free_port, wait_for_port

from cmux_gevent.workspace import workspace_ip

REPO = Path(__file__).resolve().parents[2]
# Workspace numbers unlikely to be used by a developer's own dev servers.
WORKSPACE_BASE = 41000 + os.getpid() % 1000


@pytest.fixture(scope="module")
def pyz(tmp_path_factory):
    prebuilt = os.environ.get("CMUX_PYZ")
    if prebuilt:
        return Path(prebuilt).resolve()
    out = tmp_path_factory.mktemp("dist") / "cmux-gevent.pyz"
    build = subprocess.run(
        [sys.executable, "-m", "cmux_gevent.build", "--output", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert build.returncode == 0, f"build failed:\n{build.stdout[-3000:]}{build.stderr[-3000:]}"
    assert out.is_file()
    return out


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """A venv with no pip, no packages and no access to the system's site-packages."""
    venv = tmp_path_factory.mktemp("bare-venv")
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    python = str(venv / "bin" / "python3")
    probe = subprocess.run(
        [python, "-I", "-c", "import gevent"], capture_output=True, timeout=30, check=False
    )
    assert probe.returncode != 0, "the bare Python can import gevent: the test would prove nothing"
    return python


@pytest.fixture
def home(tmp_path):
    """HOME and CWD for the zipapp: shiv extracts into HOME/.shiv."""
    path = tmp_path / "home"
    path.mkdir()
    return path


def port_free_on_both(ip):
    """A port free on `ip` and on 127.0.0.1, so that 127.0.0.1 refusing it means something."""
    for _ in range(50):
        port = free_port(ip)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no port free on both {ip} and 127.0.0.1")


def bare_env(home, **extra):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
    env.update(extra)
    return env


def pyz_argv(bare_python, pyz, *args):
    return [bare_python, "-I", str(pyz), *args]


class MarkerHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the server's marker and the Host it was sent."""

    marker = b""

    def do_GET(self):
        body = self.marker + b" host=" + self.headers.get("Host", "").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def upstream():
    """A real server on a workspace's own address: (workspace, port, marker)."""
    workspace = f"workspace-{WORKSPACE_BASE}"
    ip = workspace_ip(workspace)
    handler = type("Handler", (MarkerHandler,), {"marker": b"upstream-" + workspace.encode()})
    server = http.server.ThreadingHTTPServer((ip, free_port(ip)), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield workspace, server.server_address[1], handler.marker
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.fixture
def pyz_proxy(pyz, bare_python, home):
    """The zipapp daemon, run as `python3 -I cmux-gevent.pyz --listen ...`; yields its port."""
    port = free_port()
    proc = subprocess.Popen(
        pyz_argv(bare_python, pyz, "--listen", f"127.0.0.1:{port}"),
        cwd=home,
        env=bare_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=60, proc=proc)
    except RuntimeError:
        pytest.fail(f"zipapp daemon died: {proc.stderr.read().decode(errors='replace')[-2000:]}")
    yield port
    proc.terminate()
    proc.wait(20)
    proc.stderr.close()


def get(port, headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/", headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.timeout(600)
def test_pyz_on_bare_python_routes_by_headers_and_host(pyz_proxy, upstream):
    workspace, port, marker = upstream
    status, body = get(
        pyz_proxy,
        {"X-Cmux-Port-Internal": str(port), "X-Cmux-Workspace-Internal": workspace},
    )
    assert (status, body.split(b" ")[0]) == (200, marker)
    status, body = get(pyz_proxy, {"Host": f"{workspace}-{port}.localhost"})
    assert (status, body.split(b" ")[0]) == (200, marker)
    status, _ = get(pyz_proxy, {})
    assert status == 400


@pytest.mark.timeout(600)
def test_pyz_version_without_anything_installed(pyz, bare_python, home):
    from cmux_gevent import __version__

    out = subprocess.run(
        pyz_argv(bare_python, pyz, "--version"),
        cwd=home,
        env=bare_env(home),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == f"cmux-gevent {__version__}"


@pytest.mark.timeout(600)
def test_pyz_preload_path_is_an_extracted_shim_that_isolates(pyz, bare_python, home, pyz_proxy):
    """A dev server preloaded with the zipapp's shim binds its workspace's address
    when it asks for 127.0.0.1, and the zipapp daemon routes to it."""
    out = subprocess.run(
        pyz_argv(bare_python, pyz, "preload-path"),
        cwd=home,
        env=bare_env(home),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    shim = Path(out.stdout.strip())
    assert shim.is_file() and shim.name == "libworkspace_net.so"
    assert home / ".shiv" in shim.parents, f"{shim} is not under {home}/.shiv"

    workspace = f"workspace-{WORKSPACE_BASE + 1}"
    ip = workspace_ip(workspace)
    port = port_free_on_both(ip)
    site = home / "site"
    site.mkdir()
    (site / "index.html").write_text(f"dev-server-{workspace}")
    server = subprocess.Popen(
        [bare_python, "-I", "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=site,
        env=bare_env(home, LD_PRELOAD=str(shim), CMUX_WORKSPACE_INTERNAL=workspace),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(ip, port, timeout=30, proc=server)  # on the workspace's address
        with pytest.raises(OSError):  # and not on the 127.0.0.1 it asked for
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        status, body = get(
            pyz_proxy,
            {"X-Cmux-Port-Internal": str(port), "X-Cmux-Workspace-Internal": workspace},
        )
        assert (status, body) == (200, f"dev-server-{workspace}".encode())
    finally:
        server.terminate()
        server.wait(20)
