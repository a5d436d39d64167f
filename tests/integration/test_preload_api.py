"""cmux_gevent.preload (library_path, workspace_env, run) with the real shim, and
the documented limits of LD_PRELOAD isolation (static binaries, raw syscalls).

Workspace numbers are chosen in the 4100s so that they do not collide with
other test suites that use workspace-1, workspace-2, ... concurrently.
"""

import os
import shutil
import signal
import subprocess
import sys

import pytest
from conftest import REPO, base_env, run_captured, shim_env

from cmux_gevent import preload
from cmux_gevent.workspace import InvalidWorkspace, workspace_ip

# ---------------------------------------------------------------------------
# cmux_gevent.preload


@pytest.mark.timeout(30)
def test_library_path_finds_the_build(shim, monkeypatch):
    monkeypatch.delenv("CMUX_PRELOAD_LIB", raising=False)
    path = preload.library_path()
    assert os.path.isabs(path) and os.path.isfile(path)
    assert os.path.basename(path) == "libworkspace_net.so"


@pytest.mark.timeout(30)
def test_library_path_override(shim, monkeypatch, tmp_path):
    copy = tmp_path / "custom.so"
    shutil.copy(shim, copy)
    monkeypatch.setenv("CMUX_PRELOAD_LIB", str(copy))
    assert preload.library_path() == str(copy)
    monkeypatch.setenv("CMUX_PRELOAD_LIB", str(tmp_path / "missing.so"))
    with pytest.raises(FileNotFoundError):
        preload.library_path()


@pytest.mark.timeout(30)
def test_library_path_missing_says_how_to_build(tmp_path):
    """A copy of the package with no shim anywhere next to it."""
    pkg = tmp_path / "cmux_gevent"
    pkg.mkdir()
    for f in ("__init__.py", "workspace.py", "preload.py"):
        shutil.copy(REPO / "cmux_gevent" / f, pkg / f)
    code = """
from cmux_gevent import preload
try:
    preload.library_path()
except FileNotFoundError as e:
    print(e)
"""
    r = run_captured(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=base_env(),
        timeout=20,
    )
    assert r.returncode == 0, r.stderr
    assert "make -C preload" in r.stdout


@pytest.mark.timeout(30)
def test_workspace_env(shim, monkeypatch):
    monkeypatch.delenv("CMUX_PRELOAD_LIB", raising=False)
    lib = preload.library_path()
    env = preload.workspace_env("workspace-4171", {"PATH": "/bin", "LD_PRELOAD": "/a.so /b.so"})
    assert env["LD_PRELOAD"] == f"{lib}:/a.so:/b.so"
    assert env["CMUX_WORKSPACE_INTERNAL"] == "workspace-4171"
    assert env["PATH"] == "/bin"
    again = preload.workspace_env("workspace-4171", env)
    assert again["LD_PRELOAD"] == env["LD_PRELOAD"]  # not added twice
    assert preload.workspace_env("w", {})["LD_PRELOAD"] == lib
    with pytest.raises(InvalidWorkspace):
        preload.workspace_env("workspace-4294967296", {})
    with pytest.raises(ValueError):
        preload.workspace_env("", {})


@pytest.mark.timeout(30)
def test_run_exit_codes_and_environment(shim, monkeypatch, tmp_path):
    for k in [k for k in os.environ if k.startswith("CMUX_")]:
        monkeypatch.delenv(k)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    py = sys.executable
    assert preload.run("workspace-4172", [py, "-c", "pass"]) == 0
    assert preload.run("workspace-4172", [py, "-c", "import sys; sys.exit(7)"]) == 7
    assert preload.run("workspace-4172", ["sh", "-c", "kill -TERM $$"]) == 128 + signal.SIGTERM
    assert preload.run("workspace-4172", ["sh", "-c", "kill -KILL $$"]) == 128 + signal.SIGKILL
    assert preload.run("workspace-4172", [str(tmp_path / "no-such-command")]) == 127
    # An invalid workspace never runs the command (it would run unisolated).
    marker = tmp_path / "ran"
    assert preload.run("workspace-4294967296", ["touch", str(marker)]) == 2
    assert not marker.exists()
    out = tmp_path / "out.txt"
    code = (
        "import os, socket, sys\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0))\n"
        "open(sys.argv[1], 'w').write('\\n'.join([os.environ['LD_PRELOAD'], "
        "os.environ['CMUX_WORKSPACE_INTERNAL'], s.getsockname()[0]]))\n"
    )
    assert preload.run("workspace-4172", [py, "-c", code, str(out)]) == 0
    ld_preload, ws, bound = out.read_text().split("\n")
    assert ld_preload == preload.library_path()
    assert ws == "workspace-4172"
    assert bound == "127.18.16.76"


RUN_DRIVER = r"""
import sys
from cmux_gevent import preload
child = '''
import signal, sys, time
def on(sig, frame):
    print("child got", sig, flush=True)
    sys.exit(40 + sig)
signal.signal(signal.SIGINT, on)
signal.signal(signal.SIGTERM, on)
print("ready", flush=True)
while True:
    signal.pause()
'''
sys.exit(preload.run("workspace-4173", [sys.executable, "-c", child]))
"""


@pytest.mark.timeout(30)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_forwards_signals(shim, sig):
    driver = subprocess.Popen(
        [sys.executable, "-c", RUN_DRIVER],
        cwd=REPO,
        env=base_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert driver.stdout.readline().strip() == "ready"
        driver.send_signal(sig)
        out, err = driver.communicate(timeout=20)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert out.strip() == f"child got {int(sig)}", err
    assert driver.returncode == 40 + sig


# ---------------------------------------------------------------------------
# What the shim cannot isolate (documented in preload/README.md): these tests
# pin the limits down so that the documentation stays true.

STATIC_C = r"""
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
int main(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in s;
    memset(&s, 0, sizeof s);
    s.sin_family = AF_INET;
    inet_pton(AF_INET, "127.0.0.1", &s.sin_addr);
    if (bind(fd, (struct sockaddr *)&s, sizeof s) != 0) { perror("bind"); return 1; }
    socklen_t l = sizeof s;
    getsockname(fd, (struct sockaddr *)&s, &l);
    char ip[INET_ADDRSTRLEN];
    printf("OK %s\n", inet_ntop(AF_INET, &s.sin_addr, ip, sizeof ip));
    return 0;
}
"""


@pytest.mark.timeout(60)
def test_limit_statically_linked_binary_escapes(shim, tmp_path):
    (tmp_path / "static.c").write_text(STATIC_C)
    cc = run_captured(
        ["cc", "-static", "-o", str(tmp_path / "static"), str(tmp_path / "static.c")],
        timeout=60,
    )
    if cc.returncode != 0:
        pytest.skip(f"no static libc to link against: {cc.stderr[-200:]}")
    r = run_captured(
        [str(tmp_path / "static")],
        env=shim_env(shim, "workspace-4181"),
        timeout=20,
    )
    # ld.so never runs, so LD_PRELOAD is ignored: the real 127.0.0.1 is used.
    assert r.stdout.strip() == "OK 127.0.0.1", r.stderr


@pytest.mark.timeout(30)
def test_limit_raw_syscall_escapes_but_libc_call_does_not(shim):
    code = r"""
import ctypes, platform, socket, struct
assert platform.machine() == "x86_64"
SYS_bind = 49
libc = ctypes.CDLL(None, use_errno=True)
addr = struct.pack("=HH4s8x", socket.AF_INET, 0, socket.inet_aton("127.0.0.1"))
raw, viacall = socket.socket(), socket.socket()
assert libc.syscall(SYS_bind, raw.fileno(), addr, len(addr)) == 0
assert libc.bind(viacall.fileno(), addr, len(addr)) == 0
print(raw.getsockname()[0], viacall.getsockname()[0])
"""
    if os.uname().machine != "x86_64":
        pytest.skip("SYS_bind number hard-coded for x86_64")
    r = run_captured(
        [sys.executable, "-c", code],
        env=shim_env(shim, "workspace-4182"),
        timeout=20,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["127.0.0.1", workspace_ip("workspace-4182")]
