"""The single-file daemon: `python -m cmux_gevent.build` makes a shiv zipapp that
runs on a Python where nothing was installed, routes requests, and carries a
shim that works as LD_PRELOAD once shiv has extracted it.

Set CMUX_PYZ to test a prebuilt zipapp instead of building one (the build
downloads gevent, httptools and docopt-ng wheels with pip).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, http_get, run_captured, wait_for_port
from integration.upstreams import Upstream, echo_http

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
    build = run_captured(
        [sys.executable, "-m", "cmux_gevent.build", "--output", str(out)],
        cwd=REPO,
        timeout=540,
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


def bare_env(home, **extra):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
    env.update(extra)
    return env


def pyz_argv(bare_python, pyz, *args):
    return [bare_python, "-I", str(pyz), *args]


@pytest.fixture
def zipapp(pyz, bare_python, home):
    """zipapp(*args): what `python3 -I cmux-gevent.pyz ARGS` run in HOME printed (exit 0)."""

    def run(*args) -> str:
        argv = pyz_argv(bare_python, pyz, *args)
        done = run_captured(argv, cwd=home, env=bare_env(home), timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    return run


@pytest.fixture
def upstream():
    """A real server on a workspace's own address, named after the workspace:
    (workspace, port). It answers with its name and what it received."""
    workspace = f"workspace-{WORKSPACE_BASE}"
    with Upstream(echo_http, host=workspace_ip(workspace), name=workspace) as server:
        yield workspace, server.port


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
    wait_for_port("127.0.0.1", port, timeout=60, proc=proc)  # if it dies: its stderr
    yield port
    proc.terminate()
    proc.wait(20)
    proc.stderr.close()


def get(port, headers):
    return http_get("127.0.0.1", port, "/", headers)


@pytest.mark.timeout(600)
def test_pyz_on_bare_python_routes_by_headers_and_host(pyz_proxy, upstream):
    workspace, port = upstream
    for headers in (
        {"X-Cmux-Port-Internal": str(port), "X-Cmux-Workspace-Internal": workspace},
        {"Host": f"{workspace}-{port}.localhost"},
    ):
        status, body = get(pyz_proxy, headers)
        assert status == 200, body
        assert json.loads(body)["server"] == workspace
    status, _ = get(pyz_proxy, {})
    assert status == 400


@pytest.mark.timeout(600)
def test_pyz_version_without_anything_installed(zipapp):
    from cmux_gevent import __version__

    assert zipapp("--version").strip() == f"cmux-gevent {__version__}"


@pytest.mark.timeout(600)
def test_pyz_preload_path_is_an_extracted_shim_that_isolates(zipapp, bare_python, home, pyz_proxy):
    """A dev server preloaded with the zipapp's shim binds its workspace's address
    when it asks for 127.0.0.1, and the zipapp daemon routes to it."""
    shim = Path(zipapp("preload-path").strip())
    assert shim.is_file() and shim.name == "libworkspace_net.so"
    assert home / ".shiv" in shim.parents, f"{shim} is not under {home}/.shiv"

    workspace = f"workspace-{WORKSPACE_BASE + 1}"
    ip = workspace_ip(workspace)
    port = free_port(ip, "127.0.0.1")  # 127.0.0.1 refusing it means something
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
