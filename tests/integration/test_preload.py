"""The LD_PRELOAD workspace shim (preload/workspace_net.c) on real processes.

Everything here runs real programs (bash, python3 -m http.server, node, small
C programs compiled into a temporary directory) under the shim and talks to
them over real loopback sockets. The shim is built with `make -C preload` once
per session; a build failure fails the tests.

Workspace numbers are chosen in the 4100s so that they do not collide with
other test suites that use workspace-1, workspace-2, ... concurrently.
"""

import concurrent.futures
import errno
import json
import os
import random
import shutil
import signal
import socket
import string
import subprocess
import sys
import time

import pytest
from conftest import (
    REPO,
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

from cmux_gevent import preload
from cmux_gevent.workspace import InvalidWorkspace, workspace_ip

VALGRIND = shutil.which("valgrind") or "/usr/bin/valgrind"

# ---------------------------------------------------------------------------
# C helpers, compiled per session

PROBE_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Binds a stream socket to addr:0 and writes "OK <bound ip>" or "ERR <errno>". */
static void bind_probe(int family, const char *addr, int v6only, char *out, size_t n)
{
    int fd = socket(family, SOCK_STREAM, 0);
    if (fd < 0) { snprintf(out, n, "ERR %d", errno); return; }
    int one = 1;
    if (v6only && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0) {
        snprintf(out, n, "ERR setsockopt %d", errno); close(fd); return;
    }
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    if (family == AF_INET) {
        struct sockaddr_in *s = (struct sockaddr_in *)&ss;
        s->sin_family = AF_INET;
        inet_pton(AF_INET, addr, &s->sin_addr);
        len = sizeof *s;
    } else {
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss;
        s->sin6_family = AF_INET6;
        inet_pton(AF_INET6, addr, &s->sin6_addr);
        len = sizeof *s;
    }
    if (bind(fd, (struct sockaddr *)&ss, len) != 0) {
        snprintf(out, n, "ERR %d", errno); close(fd); return;
    }
    len = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &len);
    char ip[INET6_ADDRSTRLEN] = "?";
    if (ss.ss_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, ip, sizeof ip);
    else
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, ip, sizeof ip);
    snprintf(out, n, "OK %s", ip);
    close(fd);
}

#define NTHREADS 16
static pthread_barrier_t barrier;
static char results[NTHREADS][128];
static void *thread_main(void *arg)
{
    long i = (long)arg;
    pthread_barrier_wait(&barrier);
    bind_probe(AF_INET, "127.0.0.1", 0, results[i], sizeof results[i]);
    return NULL;
}

static char handler_result[128];
static void on_usr1(int sig)
{
    (void)sig;
    bind_probe(AF_INET, "127.0.0.1", 0, handler_result, sizeof handler_result);
}

int main(int argc, char **argv)
{
    char out[256];
    if (argc < 2) {                       /* the mapping test: fastest path */
        bind_probe(AF_INET, "127.0.0.1", 0, out, sizeof out);
    } else if (!strcmp(argv[1], "bind4")) {
        bind_probe(AF_INET, argv[2], 0, out, sizeof out);
    } else if (!strcmp(argv[1], "bind6")) {
        bind_probe(AF_INET6, argv[2], 0, out, sizeof out);
    } else if (!strcmp(argv[1], "bind6only")) {
        bind_probe(AF_INET6, argv[2], 1, out, sizeof out);
    } else if (!strcmp(argv[1], "threads")) {
        /* NTHREADS threads race to make the first intercepted call. */
        pthread_t t[NTHREADS];
        pthread_barrier_init(&barrier, NULL, NTHREADS);
        for (long i = 0; i < NTHREADS; i++)
            pthread_create(&t[i], NULL, thread_main, (void *)i);
        for (int i = 0; i < NTHREADS; i++)
            pthread_join(t[i], NULL);
        snprintf(out, sizeof out, "%s", results[0]);
        for (int i = 1; i < NTHREADS; i++)
            if (strcmp(results[i], results[0]) != 0)
                snprintf(out, sizeof out, "MISMATCH %s / %s", results[0], results[i]);
    } else if (!strcmp(argv[1], "signal")) {
        /* The very first intercepted call happens inside a signal handler. */
        signal(SIGUSR1, on_usr1);
        raise(SIGUSR1);
        snprintf(out, sizeof out, "%s", handler_result);
    } else {
        fprintf(stderr, "usage\n");
        return 2;
    }
    puts(out);
    return 0;
}
"""

GAI_C = r"""
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

struct query { const char *node, *service; int family, socktype, flags; };
static const struct query queries[] = {
    {"localhost", "80", AF_UNSPEC, 0, 0},
    {"localhost", "http", AF_INET, SOCK_STREAM, 0},
    {"localhost", "8080", AF_INET6, 0, 0},
    {NULL, "80", AF_UNSPEC, 0, AI_PASSIVE},
    {"127.0.0.1", "443", AF_INET, SOCK_DGRAM, AI_CANONNAME},
    {"", "81", AF_UNSPEC, SOCK_STREAM, 0},
    {"localhost", "no-such-service-cmux", AF_UNSPEC, 0, 0},
    {"LocalHost", NULL, AF_UNSPEC, SOCK_STREAM, AI_ADDRCONFIG},
};

int main(int argc, char **argv)
{
    int loops = argc > 1 ? atoi(argv[1]) : 1;
    size_t nq = sizeof queries / sizeof queries[0];
    for (int loop = 0; loop < loops; loop++) {
        for (size_t q = 0; q < nq; q++) {
            struct addrinfo hints, *res = NULL;
            memset(&hints, 0, sizeof hints);
            hints.ai_family = queries[q].family;
            hints.ai_socktype = queries[q].socktype;
            hints.ai_flags = queries[q].flags;
            int rc = getaddrinfo(queries[q].node, queries[q].service, &hints, &res);
            if (loop == 0)
                printf("query %zu rc=%d", q, rc);
            for (struct addrinfo *ai = res; rc == 0 && ai; ai = ai->ai_next) {
                char ip[INET6_ADDRSTRLEN] = "?";
                int port = -1;
                socklen_t want = ai->ai_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                           : sizeof(struct sockaddr_in);
                if (ai->ai_family == AF_INET) {
                    struct sockaddr_in *s = (struct sockaddr_in *)ai->ai_addr;
                    inet_ntop(AF_INET, &s->sin_addr, ip, sizeof ip);
                    port = ntohs(s->sin_port);
                } else if (ai->ai_family == AF_INET6) {
                    struct sockaddr_in6 *s = (struct sockaddr_in6 *)ai->ai_addr;
                    inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof ip);
                    port = ntohs(s->sin6_port);
                }
                if (loop == 0)
                    printf(" | %d/%d/%d %s %d len=%s canon=%s", ai->ai_family,
                           ai->ai_socktype, ai->ai_protocol, ip, port,
                           ai->ai_addrlen == want ? "ok" : "BAD",
                           ai->ai_canonname ? ai->ai_canonname : "-");
            }
            if (loop == 0)
                printf("\n");
            if (rc == 0)
                freeaddrinfo(res);
        }
    }
    return 0;
}
"""


@pytest.fixture(scope="session")
def cprogs(tmp_path_factory):
    """The C helper programs, compiled with the system compiler."""
    out = tmp_path_factory.mktemp("preload-cprogs")
    progs = {}
    for name, src in (("probe", PROBE_C), ("gai", GAI_C)):
        (out / f"{name}.c").write_text(src)
        cc = run_captured(
            [
                "cc",
                "-O1",
                "-g",
                "-Wall",
                "-Werror",
                "-pthread",
                "-o",
                str(out / name),
                str(out / f"{name}.c"),
            ],
            timeout=120,
        )
        assert cc.returncode == 0, cc.stderr
        progs[name] = str(out / name)
    return progs


# ---------------------------------------------------------------------------
# helpers


def run_probe(cprogs, env, *args, cwd="/"):
    r = run_captured(
        [cprogs["probe"], *args],
        env=env,
        cwd=cwd,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


# ---------------------------------------------------------------------------
# 1. connect rewrite


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
# 2. detection


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
# 3. python -m http.server in two workspaces on the same port


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
# 4. node listen(PORT) (binds :: dual-stack) in two workspaces


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
# 5. IPV6_V6ONLY


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


# ---------------------------------------------------------------------------
# 6. getaddrinfo


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
# 7. getaddrinfo under valgrind


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
# 8. mapping agreement: C shim vs cmux_gevent.workspace.workspace_ip


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


# ---------------------------------------------------------------------------
# 10. cmux_gevent.preload


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
