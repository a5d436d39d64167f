"""The scenarios: each runs against one system and returns a record of numbers.

get      small GETs on keep-alive connections: req/s, p50/p99, proxy CPU µs/req
bulk     one download of --size bytes on one connection: MB/s, proxy CPU s/GB
connect  the same download through a CONNECT tunnel (nginx: its TCP relay): MB/s
ws-idle  --idle-conns idle WebSockets held open: proxy RSS growth per connection

Proxy CPU and RSS cover the whole process tree (nginx workers, cmux --workers).
"""

import json
import re
import select
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

from procs import ProcessSet, tree_cpu_seconds, tree_rss_bytes

HERE = Path(__file__).resolve().parent
LOADGEN_PY = HERE / "clients" / "loadgen.py"
WS_IDLE_PY = HERE / "clients" / "ws_idle.py"
IO_TIMEOUT = 60.0  # a stalled transfer fails the run instead of hanging it
READ_CHUNK = 1 << 20
WARM_UP_REQUESTS = 50
SETTLE_SECONDS = 5.0  # how long RSS may keep moving after the last handshake


class Context:
    """What every scenario needs: options, upstreams, the process set, the load generator."""

    def __init__(self, options, upstreams, procs: ProcessSet, wrk):
        self.options, self.upstreams, self.procs, self.wrk = options, upstreams, procs, wrk


def _cpu(system) -> float:
    return tree_cpu_seconds(system.pid) if system.pid else 0.0


# -- get --------------------------------------------------------------------------


def run_get(system, ctx: Context) -> dict:
    port = system.http_port(ctx.upstreams.origin_port)
    warm_up(port, ctx.upstreams.origin_port)
    cpu_before = _cpu(system)
    record = _wrk(ctx, port) if ctx.wrk else _python_loadgen(ctx, port, system.name)
    if system.pid and record.get("requests"):
        record["cpu_us_per_req"] = (_cpu(system) - cpu_before) / record["requests"] * 1e6
    return record


def warm_up(port: int, origin_port: int, requests: int = WARM_UP_REQUESTS) -> None:
    """A few sequential GETs first, so lazy imports and first connects are not measured."""
    request = (
        b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Cmux-Port-Internal: %d\r\n\r\n" % origin_port
    )
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
        for _ in range(requests):
            sock.sendall(request)
            status, length, rest = read_head(sock, b"")
            if (
                status != 200
                or length is None
                or read_exactly(sock, length - len(rest)) + len(rest) != length
            ):
                raise RuntimeError(f"warm-up GET answered {status}")


def _wrk(ctx: Context, port: int) -> dict:
    opts = ctx.options
    cmd = [
        ctx.wrk,
        "-t",
        str(opts.threads),
        "-c",
        str(opts.conns),
        "-d",
        f"{opts.duration}s",
        "--latency",
    ]
    cmd += [
        "-H",
        f"X-Cmux-Port-Internal: {ctx.upstreams.origin_port}",
        f"http://127.0.0.1:{port}/ok",
    ]
    out = subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=opts.duration + 60
    ).stdout
    record = {"generator": "wrk", "cmd": shlex.join(cmd)}
    found = re.search(r"(\d+) requests in", out)
    record["requests"] = int(found.group(1)) if found else 0
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    record["rps"] = float(found.group(1)) if found else 0.0
    for pct in ("50", "99"):
        found = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\b", out, re.MULTILINE)
        if found:
            record[f"p{pct}_ms"] = (
                float(found.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[found.group(2)]
            )
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    record["errors"] = (int(errors.group(1)) if errors else 0) + (
        sum(int(n) for n in sockets.groups()) if sockets else 0
    )
    if not record["rps"]:
        record["error"] = "wrk: " + out[-300:]
    return record


def _python_loadgen(ctx: Context, port: int, name: str) -> dict:
    """One loadgen.py process per load thread, their histograms merged."""
    opts = ctx.options
    per_proc = max(1, opts.conns // opts.threads)
    argv = [
        sys.executable,
        str(LOADGEN_PY),
        str(port),
        str(ctx.upstreams.origin_port),
        str(per_proc),
    ]
    argv.append(str(opts.duration))
    clients = [
        ctx.procs.start(f"loadgen-{name}-{i}", argv, pipes=True) for i in range(opts.threads)
    ]
    results = []
    try:
        for client in clients:
            out, _ = client.popen.communicate(timeout=opts.duration + 60)
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        for client in clients:
            ctx.procs.stop(client)
    return merge_loadgen(results, f"{shlex.join(argv)}  (x{opts.threads})")


def merge_loadgen(results: list, cmd: str) -> dict:
    """Sum requests, take the longest duration, and read percentiles off the summed histogram."""
    hist = {}
    for result in results:
        for bucket, count in result["hist"].items():
            hist[int(bucket)] = hist.get(int(bucket), 0) + count
    requests = sum(r["requests"] for r in results)
    seconds = max(r["seconds"] for r in results)
    record = {"generator": "python", "cmd": cmd, "requests": requests, "rps": requests / seconds}
    record["errors"] = sum(r["errors"] for r in results)
    total, seen = sum(hist.values()), 0
    targets = {"p50_ms": 0.50 * total, "p99_ms": 0.99 * total}
    for bucket in sorted(hist):
        seen += hist[bucket]
        for key, target in list(targets.items()):
            if seen >= target:
                record[key] = (bucket + 1) * 10 / 1000  # bucket upper edge, 10 µs buckets
                del targets[key]
    if not requests:
        record["error"] = "no successful request"
    return record


# -- bulk and connect -------------------------------------------------------------


def run_bulk(system, ctx: Context) -> dict:
    origin = ctx.upstreams.origin_port
    return _timed_download(system, ctx, system.http_port(origin), connect_to=None)


def run_connect(system, ctx: Context) -> dict:
    origin = ctx.upstreams.origin_port
    if system.tunnel is None:
        return {"skipped": "no tunnel: nginx without the stream module"}
    if system.tunnel == "tcp":
        return dict(_timed_download(system, ctx, system.tcp_port, connect_to=None), via="TCP relay")
    if system.tunnel == "direct":
        return dict(_timed_download(system, ctx, origin, connect_to=None), via="direct")
    return dict(_timed_download(system, ctx, system.port, connect_to=origin), via="CONNECT")


def _timed_download(system, ctx: Context, port: int, connect_to) -> dict:
    cpu_before = _cpu(system)
    started = time.perf_counter()
    moved = download(port, ctx.upstreams.origin_port, connect_to)
    seconds = time.perf_counter() - started
    record = {"bytes": moved, "seconds": seconds, "mb_s": moved / seconds / 1e6}
    if system.pid:
        record["cpu_s_per_gb"] = (_cpu(system) - cpu_before) / (moved / 1e9)
    if moved != ctx.options.size:
        record["error"] = f"moved {moved} bytes, expected {ctx.options.size}"
    return record


def download(port: int, origin_port: int, connect_to) -> int:
    """GET /bulk on one connection (through `CONNECT 127.0.0.1:connect_to` first if given);
    returns the body bytes read."""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        routing = b"X-Cmux-Port-Internal: %d\r\n" % origin_port
        rest = b""
        if connect_to:
            authority = b"127.0.0.1:%d" % connect_to
            sock.sendall(
                b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (authority, authority, routing)
            )
            status, _, rest = read_head(sock, b"")
            if status != 200:
                raise RuntimeError(f"CONNECT answered {status}")
            routing = b""
        sock.sendall(
            b"GET /bulk HTTP/1.1\r\nHost: 127.0.0.1\r\n%sConnection: close\r\n\r\n" % routing
        )
        status, length, rest = read_head(sock, rest)
        if status != 200 or length is None:
            raise RuntimeError(f"GET /bulk answered {status} (content-length {length})")
        return len(rest) + read_exactly(sock, length - len(rest))


def read_head(sock, pending: bytes):
    """(status, content-length or None, bytes after the head)."""
    while b"\r\n\r\n" not in pending:
        data = sock.recv(65536)
        if not data:
            raise RuntimeError(f"EOF before a response head: {pending[:200]!r}")
        pending += data
    head, rest = pending.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return status, int(found.group(1)) if found else None, rest


def read_exactly(sock, left: int) -> int:
    buf = bytearray(READ_CHUNK)
    view, total = memoryview(buf), 0
    while left > 0:
        got = sock.recv_into(view, min(left, READ_CHUNK))
        if not got:
            break
        total += got
        left -= got
    return total


# -- ws-idle ----------------------------------------------------------------------


def run_ws_idle(system, ctx: Context) -> dict:
    """Fresh proxy, RSS before, hold N WebSockets, RSS once it settles; the growth per
    connection."""
    if system.pid:
        system.restart()
    count = ctx.options.idle_conns
    before = settled_rss(system.pid) if system.pid else 0  # forked workers are still importing
    port = system.http_port(ctx.upstreams.ws_port)
    argv = [sys.executable, str(WS_IDLE_PY), str(port), str(ctx.upstreams.ws_port), str(count)]
    client = ctx.procs.start(f"ws-idle-{system.name}", argv, pipes=True)
    try:
        opened = json.loads(_read_line(client.popen, timeout=60 + count / 50))
        after = settled_rss(system.pid) if system.pid else 0
    finally:
        ctx.procs.stop(client)  # closes its stdin first: it hangs up all connections
    record = {"cmd": shlex.join(argv), "opened": opened["opened"], "failed": opened["failed"]}
    if system.pid:
        record.update(rss_before_mib=before / 2**20, rss_after_mib=after / 2**20)
        if opened["opened"]:
            record["kib_per_conn"] = (after - before) / opened["opened"] / 1024
    if opened["failed"]:
        record["error"] = f"{opened['failed']} of {count} failed: {opened['errors']}"
    return record


def _read_line(popen, timeout: float) -> str:
    ready, _, _ = select.select([popen.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError(f"no answer from the WebSocket client within {timeout:.0f}s")
    line = popen.stdout.readline().decode()
    if not line:
        raise RuntimeError(f"WebSocket client exited with {popen.wait(5)}")
    return line


def settled_rss(pid: int) -> int:
    """Tree RSS once two samples 0.25 s apart differ by < 1 %, or after SETTLE_SECONDS."""
    deadline = time.monotonic() + SETTLE_SECONDS
    last = tree_rss_bytes(pid)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = tree_rss_bytes(pid)
        if abs(now - last) < last / 100:
            return now
        last = now
    return last


SCENARIOS = {"get": run_get, "bulk": run_bulk, "connect": run_connect, "ws-idle": run_ws_idle}
