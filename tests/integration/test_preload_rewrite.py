"""The LD_PRELOAD workspace shim (preload/workspace_net.c): bind and connect rewrites.

Real programs (bash /dev/tcp, python3, python3 -m http.server, node, the C
`probe` from preload_helpers) run under the shim and are reached over real
loopback sockets: connect/bind rewrites, workspace detection from the CWD and
the environment, the disable switch, IPV6_V6ONLY, and two servers on one port
in two workspaces. The shim is built with `make -C preload` once per session;
a build failure fails the tests.

Workspace numbers are chosen in the 4100s so that they do not collide with
other test suites that use workspace-1, workspace-2, ... concurrently.
"""

import errno
import shutil
import socket
import subprocess
import sys

import pytest
from conftest import (
    base_env,
    can_connect,
    free_port,
    http_get,
    port_free,
    run_captured,
    shim_env,
    wait_for_port,
    wait_until,
)

from cmux_gevent.workspace import workspace_ip

pytest_plugins = ["integration.preload_helpers"]


# ---------------------------------------------------------------------------
# helpers


def run_probe(cprogs, env, *args, cwd="/"):
    """Runs `probe` with the given arguments; returns its one output line."""
    r = run_captured(
        [cprogs["probe"], *args],
        env=env,
        cwd=cwd,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


# ---------------------------------------------------------------------------
# connect rewrite


@pytest.mark.timeout(30)
def test_bash_dev_tcp_connect_reaches_workspace_listener(shim):
    ws = "workspace-4111"
    ip = workspace_ip(ws)
    with socket.socket() as listener:
        listener.bind((ip, 0))
        listener.listen()
        listener.settimeout(20)
        port = listener.getsockname()[1]
        bash = subprocess.Popen(
            ["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}; echo hi >&3"],
            env=shim_env(shim, ws),
            stderr=subprocess.PIPE,
        )
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(20)
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(100)
                if not chunk:
                    break
                data += chunk
        assert bash.wait(timeout=20) == 0, bash.stderr.read()
        bash.stderr.close()
    # Only the workspace address listens on this port: the rewrite happened.
    assert data == b"hi\n"


@pytest.mark.timeout(30)
def test_connect_forms_all_reach_the_workspace(shim):
    """127.0.0.1, 0.0.0.0, localhost (getaddrinfo), ::1 and :: all end up at
    the workspace address; other addresses are untouched."""
    ws = "workspace-4112"
    ip = workspace_ip(ws)
    with socket.socket() as listener:
        listener.bind((ip, 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        code = f"""
import socket
for host in ("127.0.0.1", "0.0.0.0", "localhost"):
    socket.create_connection((host, {port}), timeout=5).close()
for host in ("::1", "::"):
    s = socket.socket(socket.AF_INET6)
    s.settimeout(5)
    s.connect((host, {port}))
    s.close()
try:
    socket.create_connection(("127.0.0.2", {port}), timeout=5)
except ConnectionRefusedError:
    print("127.0.0.2 untouched")
"""
        r = run_captured(
            [sys.executable, "-c", code],
            env=shim_env(shim, ws),
            timeout=20,
        )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "127.0.0.2 untouched"


@pytest.mark.timeout(30)
def test_log_lines(shim, cprogs):
    env = shim_env(shim, "workspace-4113", CMUX_PRELOAD_LOG="1")
    port = free_port("127.18.16.17")
    code = (
        "import socket, sys\n"
        "s = socket.socket(); s.bind(('0.0.0.0', int(sys.argv[1])))\n"
        "socket.getaddrinfo('localhost', 80, socket.AF_INET, socket.SOCK_STREAM)\n"
    )
    r = run_captured(
        [sys.executable, "-c", code, str(port)],
        env=env,
        timeout=20,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert f"cmux-preload: bind 0.0.0.0:{port} -> 127.18.16.17:{port}" in lines
    assert "cmux-preload: getaddrinfo localhost -> 127.18.16.17" in lines
    # Without CMUX_PRELOAD_LOG the shim is silent.
    r = run_captured(
        [cprogs["probe"]],
        env=shim_env(shim, "workspace-4113"),
        timeout=20,
    )
    assert r.stdout.strip() == "OK 127.18.16.17"
    assert r.stderr == ""


# ---------------------------------------------------------------------------
# detection


@pytest.fixture
def ws_root(tmp_path):
    root = tmp_path / "root"
    for d in (
        "workspace-3",
        "workspace-abc",
        "workspace-5/app/src",
        "other/workspace-6",
        "workspace-99999999999",
    ):
        (root / d).mkdir(parents=True)
    (tmp_path / "rootx" / "workspace-3").mkdir(parents=True)
    return root


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "subdir, expected",
    [
        ("workspace-3", "127.18.0.3"),
        ("workspace-abc", workspace_ip("workspace-abc")),
        ("workspace-5", "127.18.0.5"),
        ("workspace-5/app/src", "127.18.0.5"),  # any depth below the workspace
        ("other/workspace-6", "127.0.0.1"),  # must be right below the root
        ("", "127.0.0.1"),  # the root itself is no workspace
        ("workspace-99999999999", "127.0.0.1"),  # invalid name: no rewriting
    ],
)
def test_cwd_detection(shim, cprogs, ws_root, subdir, expected):
    env = shim_env(shim, CMUX_WORKSPACE_ROOT=str(ws_root))
    assert run_probe(cprogs, env, cwd=ws_root / subdir) == f"OK {expected}"


@pytest.mark.timeout(30)
def test_cwd_detection_root_edge_cases(shim, cprogs, ws_root):
    cwd = ws_root / "workspace-5" / "app"
    # A trailing slash on the root is fine.
    env = shim_env(shim, CMUX_WORKSPACE_ROOT=str(ws_root) + "/")
    assert run_probe(cprogs, env, cwd=cwd) == "OK 127.18.0.5"
    # "/.../rootx" is not inside "/.../root".
    env = shim_env(shim, CMUX_WORKSPACE_ROOT=str(ws_root))
    assert run_probe(cprogs, env, cwd=ws_root.parent / "rootx" / "workspace-3") == "OK 127.0.0.1"
    # Without CMUX_WORKSPACE_ROOT the root is /root: the tmp dir does not count.
    env = shim_env(shim)
    del env["CMUX_WORKSPACE_ROOT"]
    assert run_probe(cprogs, env, cwd=cwd) == "OK 127.0.0.1"


@pytest.mark.timeout(30)
def test_env_beats_cwd_and_invalid_env_disables(shim, cprogs, ws_root):
    cwd = ws_root / "workspace-3"
    root = str(ws_root)
    env = shim_env(shim, "/x/workspace-4114", CMUX_WORKSPACE_ROOT=root)
    assert run_probe(cprogs, env, cwd=cwd) == "OK 127.18.16.18"
    # An invalid CMUX_WORKSPACE_INTERNAL turns the shim off; no CWD fallback.
    env = shim_env(shim, "workspace-4294967296", CMUX_WORKSPACE_ROOT=root)
    assert run_probe(cprogs, env, cwd=cwd) == "OK 127.0.0.1"
    # An empty one counts as unset (as in cmux-proxy): the CWD decides.
    env = shim_env(shim, "", CMUX_WORKSPACE_ROOT=root)
    assert run_probe(cprogs, env, cwd=cwd) == "OK 127.18.0.3"


@pytest.mark.timeout(30)
def test_disable_switch(shim, cprogs, ws_root):
    for value in ("1", "yes"):
        env = shim_env(shim, "workspace-4115", CMUX_PRELOAD_DISABLE=value)
        assert run_probe(cprogs, env) == "OK 127.0.0.1"
        assert run_probe(cprogs, env, "bind4", "0.0.0.0") == "OK 0.0.0.0"
        env["CMUX_WORKSPACE_ROOT"] = str(ws_root)
        assert run_probe(cprogs, env, cwd=ws_root / "workspace-3") == "OK 127.0.0.1"
    env = shim_env(shim, "workspace-4115", CMUX_PRELOAD_DISABLE="0")
    assert run_probe(cprogs, env) == "OK 127.18.16.19"


@pytest.mark.timeout(30)
def test_bind_rewrites(shim, cprogs):
    env = shim_env(shim, "workspace-4116")
    ip = "127.18.16.20"
    assert run_probe(cprogs, env, "bind4", "0.0.0.0") == f"OK {ip}"
    assert run_probe(cprogs, env, "bind4", "127.0.0.1") == f"OK {ip}"
    assert run_probe(cprogs, env, "bind4", "127.0.0.2") == "OK 127.0.0.2"
    for addr in ("::", "::1", "::ffff:0.0.0.0", "::ffff:127.0.0.1"):
        assert run_probe(cprogs, env, "bind6", addr) == f"OK ::ffff:{ip}", addr
    # Without the shim the same binds use the real addresses.
    assert run_probe(cprogs, base_env(), "bind6", "::") == "OK ::"


@pytest.mark.timeout(30)
def test_first_call_from_many_threads_and_from_a_signal_handler(shim, cprogs):
    env = shim_env(shim, "workspace-4117")
    assert run_probe(cprogs, env, "threads") == "OK 127.18.16.21"
    assert run_probe(cprogs, env, "signal") == "OK 127.18.16.21"


# ---------------------------------------------------------------------------
# python -m http.server in two workspaces on the same port


@pytest.mark.timeout(60)
def test_http_server_two_workspaces_same_port(shim, procs, tmp_path):
    wss = ["workspace-4121", "workspace-4122"]
    ips = [workspace_ip(w) for w in wss]
    port = free_port("127.0.0.1", *ips, preferred=3000)
    servers = []
    for ws in wss:
        d = tmp_path / ws
        d.mkdir()
        (d / "who.txt").write_text(f"served from {ws}\n")
        servers.append(
            procs(
                [
                    sys.executable,
                    "-m",
                    "http.server",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--directory",
                    str(d),
                ],
                env=shim_env(shim, ws),
            )
        )
    for ip, server in zip(ips, servers):
        wait_for_port(ip, port, 20, server)
    for ws, ip in zip(wss, ips):
        assert http_get(ip, port, "/who.txt") == (200, f"served from {ws}\n".encode())
    # Nothing listens on the real 127.0.0.1.
    assert not can_connect("127.0.0.1", port)

    # A second server in the same workspace collides with the first one.
    third = run_captured(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        env=shim_env(shim, wss[0]),
        cwd=tmp_path,
        timeout=30,
    )
    assert third.returncode != 0
    assert "Address already in use" in third.stderr
    # ... and the first one still serves.
    assert http_get(ips[0], port, "/who.txt") == (200, f"served from {wss[0]}\n".encode())


# ---------------------------------------------------------------------------
# node listen(PORT) (binds :: dual-stack) in two workspaces


@pytest.mark.timeout(60)
def test_node_listen_two_workspaces_same_port(shim, procs):
    node = shutil.which("node")
    assert node, "node is required for this test"
    wss = ["workspace-4131", "workspace-4132"]
    ips = [workspace_ip(w) for w in wss]
    other_ip = workspace_ip("workspace-4133")
    port = free_port("127.0.0.1", *ips, other_ip)
    assert port_free("::1", port)
    servers = {}
    for ws, tag in zip(wss, ("ws-a", "ws-b")):
        js = f"require('http').createServer((q,s)=>s.end('{tag}')).listen({port})"
        servers[ws] = procs([node, "-e", js], env=shim_env(shim, ws))
    for ws, ip in zip(wss, ips):
        wait_for_port(ip, port, 20, servers[ws])
    assert http_get(ips[0], port) == (200, b"ws-a")
    assert http_get(ips[1], port) == (200, b"ws-b")
    # Neither server is on the host-wide addresses nor on a third workspace.
    for addr in ("127.0.0.1", "::1", other_ip):
        assert not can_connect(addr, port), addr
    # Stop B: its address goes dark, A does not take it over (A is not on ::).
    servers[wss[1]].kill()
    servers[wss[1]].wait(timeout=10)
    assert wait_until(lambda: not can_connect(ips[1], port), timeout=10)
    assert http_get(ips[0], port) == (200, b"ws-a")


# ---------------------------------------------------------------------------
# IPV6_V6ONLY


@pytest.mark.timeout(30)
def test_v6only_bind_is_a_clear_error(shim, cprogs):
    env = shim_env(shim, "workspace-4141")
    for addr in ("::", "::1"):
        assert run_probe(cprogs, env, "bind6only", addr) == f"ERR {errno.EADDRNOTAVAIL}"
    # Without the shim the very same bind succeeds on the real ::.
    assert run_probe(cprogs, base_env(), "bind6only", "::") == "OK ::"
    # With logging, the reason is spelled out.
    env["CMUX_PRELOAD_LOG"] = "1"
    r = run_captured(
        [cprogs["probe"], "bind6only", "::"],
        env=env,
        timeout=20,
    )
    assert r.stdout.strip() == f"ERR {errno.EADDRNOTAVAIL}"
    assert "IPV6_V6ONLY" in r.stderr and f"::ffff:{workspace_ip('workspace-4141')}" in r.stderr, (
        r.stderr
    )


@pytest.mark.timeout(30)
def test_v6only_connect_to_loopback_is_refused_not_escaped(shim):
    # A listener on the real ::1 that a v6-only client must NOT reach.
    with socket.socket(socket.AF_INET6) as listener:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        listener.bind(("::1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        code = f"""
import errno, socket
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
try:
    s.connect(("::1", {port}))
    print("connected")
except OSError as e:
    print(errno.errorcode[e.errno])
"""
        r = run_captured(
            [sys.executable, "-c", code],
            env=shim_env(shim, "workspace-4142", CMUX_PRELOAD_LOG="1"),
            timeout=20,
        )
    assert r.stdout.strip() == "ENETUNREACH", r.stdout + r.stderr
    assert "IPV6_V6ONLY" in r.stderr
