"""The LD_PRELOAD workspace shim (preload/workspace_net.c): name resolution and mapping.

getaddrinfo("localhost") under the shim is compared with what glibc answers
for the numeric workspace address (from Python and from C), checked for leaks
under valgrind, and the shim's name -> address mapping is compared bit for bit
with cmux_gevent.workspace.workspace_ip for 1,200 names.

Workspace numbers are chosen in the 4100s so that they do not collide with
other test suites that use workspace-1, workspace-2, ... concurrently.
"""

import concurrent.futures
import json
import os
import random
import shutil
import socket
import string
import subprocess
import sys
import time

import pytest
from conftest import base_env, run_captured, shim_env

from cmux_gevent.workspace import InvalidWorkspace, workspace_ip

pytest_plugins = ["integration.preload_helpers"]

VALGRIND = shutil.which("valgrind") or "/usr/bin/valgrind"


# ---------------------------------------------------------------------------
# getaddrinfo


GAI_SCRIPT = r"""
import json, socket, sys
def name(constant):
    return constant.name if hasattr(constant, "name") else constant
def q(host, port, family=0, type=0, proto=0, flags=0):
    try:
        return [[name(f), name(t), p, a[0], a[1]]
                for f, t, p, _, a in socket.getaddrinfo(host, port, family, type, proto, flags)]
    except socket.gaierror as e:
        return ["error", e.errno]
host = sys.argv[1]   # "localhost" under the shim, the numeric address without it
v6host = sys.argv[2]
I, I6, S, D = socket.AF_INET, socket.AF_INET6, socket.SOCK_STREAM, socket.SOCK_DGRAM
print(json.dumps({
    "unspec": q(host, 80),
    "inet": q(host, 80, I),
    "inet6": q(v6host, 80, I6),
    "stream": q(host, 80, I, S),
    "dgram": q(host, "53", I, D),
    "udp-proto": q(host, 53, I, 0, socket.IPPROTO_UDP),
    "http": q(host, "http", I),
    "http-stream": q(host, "http", I, S),
    "noservice": q(host, 80, I, S),
    "unknown-service": q(host, "no-such-service-cmux", I),
    "numericserv": q(host, "http", I, S, 0, socket.AI_NUMERICSERV),
}, sort_keys=True))
"""


@pytest.mark.timeout(30)
def test_getaddrinfo_matches_glibc_for_the_workspace_address(shim):
    """Under the shim, "localhost" gets exactly what glibc answers for the
    numeric workspace address (same socktypes, protocols, services, errors)."""
    ws = "workspace-4151"
    ip = workspace_ip(ws)

    def run(env, host, v6host):
        r = run_captured(
            [sys.executable, "-c", GAI_SCRIPT, host, v6host],
            env=env,
            timeout=20,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    shimmed = json.loads(run(shim_env(shim, ws), "localhost", "localhost"))
    reference = json.loads(run(base_env(), ip, f"::ffff:{ip}"))
    assert shimmed == reference

    # And the reference itself is what we expect of glibc.
    assert shimmed["unspec"] == [
        ["AF_INET", "SOCK_STREAM", 6, ip, 80],
        ["AF_INET", "SOCK_DGRAM", 17, ip, 80],
        ["AF_INET", "SOCK_RAW", 0, ip, 80],
    ]
    assert shimmed["inet6"][0] == ["AF_INET6", "SOCK_STREAM", 6, f"::ffff:{ip}", 80]
    assert shimmed["stream"] == [["AF_INET", "SOCK_STREAM", 6, ip, 80]]
    assert shimmed["udp-proto"] == [["AF_INET", "SOCK_DGRAM", 17, ip, 53]]
    assert ["AF_INET", "SOCK_STREAM", 6, ip, 80] in shimmed["http"]
    assert shimmed["unknown-service"] == ["error", socket.EAI_SERVICE]
    assert shimmed["numericserv"] == ["error", socket.EAI_NONAME]


@pytest.mark.timeout(30)
def test_getaddrinfo_names_and_flags(shim):
    ws = "workspace-4152"
    ip = workspace_ip(ws)
    code = r"""
import json, socket
def addrs(*a, **k):
    try:
        return sorted({r[4][0] for r in socket.getaddrinfo(*a, **k)})
    except socket.gaierror as e:
        return e.errno
S = socket.SOCK_STREAM
V4ALL = socket.AI_V4MAPPED | socket.AI_ALL
print(json.dumps({
    "localhost": addrs("localhost", 80, type=S),
    "LOCALHOST.": addrs("LOCALHOST.", 80, type=S),
    "127.0.0.1": addrs("127.0.0.1", 80, type=S),
    "none-passive": addrs(None, 80, type=S, flags=socket.AI_PASSIVE),
    "none": addrs(None, 80, type=S),
    "empty": addrs("", 80, type=S),
    "other": addrs("127.0.0.2", 80, type=S),
    "numerichost": addrs("localhost", 80, type=S, flags=socket.AI_NUMERICHOST),
    "inet6": addrs("localhost", 80, socket.AF_INET6, S),
    "v4mapped": addrs("localhost", 80, socket.AF_INET6, S, flags=V4ALL),
    "addrconfig": addrs("localhost", 80, type=S, flags=socket.AI_ADDRCONFIG),
    "unix": addrs("localhost", 80, socket.AF_UNIX),
}))
"""
    r = run_captured(
        [sys.executable, "-c", code],
        env=shim_env(shim, ws),
        timeout=20,
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    for key in (
        "localhost",
        "LOCALHOST.",
        "127.0.0.1",
        "none-passive",
        "none",
        "empty",
        "addrconfig",
    ):
        assert got[key] == [ip], key
    assert got["other"] == ["127.0.0.2"]
    assert got["numerichost"] == socket.EAI_NONAME  # "localhost" is no number
    assert got["inet6"] == got["v4mapped"] == [f"::ffff:{ip}"]
    assert isinstance(got["unix"], int)  # unsupported family: glibc's error


@pytest.mark.timeout(30)
def test_getaddrinfo_from_c_structure(shim, cprogs):
    """A C caller sees well-formed lists: right ai_addrlen, canonname only on
    request, errors where glibc gives them."""
    ws = "workspace-4153"
    ip = workspace_ip(ws)
    r = run_captured(
        [cprogs["gai"], "1"],
        env=shim_env(shim, ws),
        timeout=20,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    stream, dgram, raw = (f"{kind} {ip} 80 len=ok canon=-" for kind in ("2/1/6", "2/2/17", "2/3/0"))
    assert lines[0] == f"query 0 rc=0 | {stream} | {dgram} | {raw}"
    assert lines[1] == f"query 1 rc=0 | 2/1/6 {ip} 80 len=ok canon=-"
    assert lines[2].startswith(f"query 2 rc=0 | 10/1/6 ::ffff:{ip} 8080 len=ok canon=-")
    assert lines[3].startswith(f"query 3 rc=0 | 2/1/6 {ip} 80 len=ok")
    assert lines[4].startswith(f"query 4 rc=0 | 2/2/17 {ip} 443 len=ok canon=")
    assert "canon=-" not in lines[4]
    assert lines[5] == f"query 5 rc=0 | 2/1/6 {ip} 81 len=ok canon=-"
    assert lines[6] == f"query 6 rc={socket.EAI_SERVICE}"
    assert lines[7] == f"query 7 rc=0 | 2/1/6 {ip} 0 len=ok canon=-"


# ---------------------------------------------------------------------------
# getaddrinfo under valgrind


@pytest.mark.timeout(180)
def test_getaddrinfo_results_are_fully_freed_valgrind(shim, cprogs, tmp_path):
    assert os.path.exists(VALGRIND), "valgrind is required (apt-get install valgrind)"
    ws = "workspace-4161"
    log = tmp_path / "valgrind.log"
    r = run_captured(
        [
            VALGRIND,
            "--leak-check=full",
            "--show-leak-kinds=definite",
            "--errors-for-leak-kinds=definite",
            "--error-exitcode=97",
            f"--log-file={log}",
            cprogs["gai"],
            "200",
        ],
        env=shim_env(shim, ws),
        timeout=170,
    )
    report = log.read_text()
    assert r.returncode == 0, report
    # The shim was really in effect inside valgrind.
    assert f"query 0 rc=0 | 2/1/6 {workspace_ip(ws)} 80" in r.stdout
    assert "ERROR SUMMARY: 0 errors" in report, report
    assert "definitely lost: 0 bytes" in report or "definitely lost" not in report, report
    assert "indirectly lost: 0 bytes" in report or "indirectly lost" not in report, report


# ---------------------------------------------------------------------------
# mapping agreement: C shim vs cmux_gevent.workspace.workspace_ip


def mapping_names(count=1200, seed=4):
    rng = random.Random(seed)
    names = {
        "0",
        "workspace-0",
        "workspace-1",
        "workspace-255",
        "workspace-256",
        "workspace-65535",
        "workspace-65536",
        "workspace-4294967295",
        "workspace-4294967296",
        "workspace-04294967295",
        "workspace-" + "0" * 50 + "4294967295",
        "workspace-" + "0" * 50 + "4294967296",
        "workspace-18446744073709551616",
        "workspace-" + "9" * 200,
        "4294967295",
        "a/",
        "/",
        "a/b/workspace-9",
        "workspace-9/abc",
        "workspace-a",
        "WORKSPACE-A",
        "workspace-É",
        "workspace-é",
        "日本123",
        "😀",
        "workspace-\u0661",
    }
    letters = string.ascii_letters + "-_.~+=@ "
    unicode_chars = "éÉßøÅ中文字😀ΩЖ\u0301ñ"
    while len(names) < count:
        kind = rng.randrange(9)
        if kind == 0:
            name = f"workspace-{rng.randrange(2**32)}"
        elif kind == 1:
            name = f"workspace-{rng.randrange(2**32, 2**64)}"
        elif kind == 2:
            name = "workspace-" + "0" * rng.randrange(1, 30) + str(rng.randrange(2**33))
        elif kind == 3:
            name = "".join(rng.choice(letters) for _ in range(rng.randrange(1, 40)))
        elif kind == 4:
            name = "".join(rng.choice(letters + unicode_chars) for _ in range(rng.randrange(1, 20)))
        elif kind == 5:
            parts = [
                "".join(rng.choice(string.ascii_letters) for _ in range(rng.randrange(0, 6)))
                for _ in range(3)
            ]
            name = "/".join(parts) + rng.choice(["", "/", f"/workspace-{rng.randrange(10**12)}"])
        elif kind == 6:
            name = "".join(rng.choice(unicode_chars) for _ in range(3)) + str(rng.randrange(10**11))
        elif kind == 7:
            name = "".join(rng.choice("0123456789") for _ in range(rng.randrange(1, 25)))
        else:
            name = "Workspace-" + "".join(
                rng.choice(string.ascii_letters + string.digits) for _ in range(8)
            )
        if name:
            names.add(name)
    return sorted(names)


def expected_bind(name):
    try:
        return workspace_ip(name)
    except InvalidWorkspace:
        return "127.0.0.1"  # invalid names: the shim must not rewrite at all


@pytest.mark.timeout(120)
def test_mapping_agrees_with_python_bit_for_bit(shim, cprogs):
    names = mapping_names()
    assert len(names) >= 1000
    assert any(expected_bind(n) == "127.0.0.1" for n in names)  # invalid ones are covered
    base = shim_env(shim)

    def probe(name):
        env = dict(base, CMUX_WORKSPACE_INTERNAL=name)
        r = subprocess.run(
            [cprogs["probe"]],
            env=env,
            cwd="/",
            check=False,
            capture_output=True,
            timeout=30,
        )
        return name, r.returncode, r.stdout.decode().strip()

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(probe, names))
    elapsed = time.monotonic() - started
    mismatches = [
        (n, out, expected_bind(n))
        for n, rc, out in results
        if rc != 0 or out != f"OK {expected_bind(n)}"
    ]
    assert not mismatches, mismatches[:20]
    print(f"mapping: {len(names)} names agree, {elapsed:.2f}s")
    assert elapsed < 60
