"""Small peers for e2e/e2e.sh: stdlib only, except websocket-client for `ws-client`.

Each subcommand is one role in a scenario; e2e.sh starts the servers among them
inside workspaces (under the LD_PRELOAD shim) and the clients outside, so what
they prove is the proxy's routing, not this file.

  port-free HOST PORT      exit 0 if HOST:PORT can be bound now
  free-port                print a port the kernel considers free on 127.0.0.1
  stress ...               many workspaces through the proxy in parallel, with figures
  ws-echo PORT LABEL       WebSocket echo server on 127.0.0.1:PORT, replies "LABEL:<text>"
  ws-client ...            one WebSocket session through the proxy
  connect-forward ...      local port -> CONNECT tunnel of the proxy -> workspace port
"""

import argparse
import base64
import concurrent.futures
import hashlib
import http.client
import socket
import socketserver
import statistics
import struct
import sys
import threading
import time

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PORT_HEADER = "X-Cmux-Port-Internal"
WORKSPACE_HEADER = "X-Cmux-Workspace-Internal"


def split_address(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


# -- ports --------------------------------------------------------------------------


def port_free(args):
    """Bindable the way a dev server binds (SO_REUSEADDR): TIME_WAIT does not count."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((args.host, args.port))
        except OSError as exc:
            print(f"{args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
            return 1
    return 0


def free_port(_args):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        print(sock.getsockname()[1])
    return 0


# -- stress -------------------------------------------------------------------------


def fetch(proxy, headers, timeout=5.0):
    """(status, body text, seconds) of GET / through the proxy."""
    started = time.monotonic()
    conn = http.client.HTTPConnection(*proxy, timeout=timeout)
    try:
        conn.request("GET", "/", headers=headers)
        response = conn.getresponse()
        body = response.read().decode("utf-8", "replace").strip()
        return response.status, body, time.monotonic() - started
    finally:
        conn.close()


def wait_workspace(proxy, port, workspace, deadline):
    """Poll until the workspace's server answers through the proxy; return its first answer."""
    headers = {PORT_HEADER: str(port), WORKSPACE_HEADER: workspace}
    while True:
        try:
            status, body, _ = fetch(proxy, headers)
        except OSError as exc:
            status, body = 0, str(exc)
        if status == 200 or time.monotonic() > deadline:
            return status, body
        time.sleep(0.05)


def check_workspace(proxy, port, workspace, rounds, deadline):
    """Errors (strings) for one workspace: up in time, then every answer is its own."""
    status, body = wait_workspace(proxy, port, workspace, deadline)
    expected = f"ok-{workspace}"
    if (status, body) != (200, expected):
        return [f"{workspace}: not up in time (last: {status} {body!r})"], []
    errors, latencies = [], []
    for i in range(rounds):
        by_host = i % 2 == 1  # alternate the two ways of naming the target
        headers = (
            {"Host": f"{workspace}-{port}.localhost"}
            if by_host
            else {PORT_HEADER: str(port), WORKSPACE_HEADER: workspace}
        )
        try:
            status, body, seconds = fetch(proxy, headers)
        except OSError as exc:
            errors.append(f"{workspace}: round {i}: {exc}")
            continue
        latencies.append(seconds)
        if (status, body) != (200, expected):
            errors.append(f"{workspace}: round {i}: got {status} {body!r}, want {expected!r}")
    return errors, latencies


def stress(args):
    proxy = split_address(args.proxy)
    workspaces = [f"workspace-{args.base + i}" for i in range(args.count)]
    deadline = time.monotonic() + args.deadline
    started = time.monotonic()
    errors, latencies = [], []
    with concurrent.futures.ThreadPoolExecutor(args.conc) as pool:
        jobs = [
            pool.submit(check_workspace, proxy, args.port, ws, args.rounds, deadline)
            for ws in workspaces
        ]
        for job in jobs:
            more_errors, more_latencies = job.result()
            errors.extend(more_errors)
            latencies.extend(more_latencies)
    elapsed = time.monotonic() - started
    for error in errors:
        print(f"stress: {error}", file=sys.stderr)
    if latencies:
        ms = sorted(x * 1000 for x in latencies)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        print(
            f"{args.count} workspaces up and verified in {elapsed:.1f}s; "
            f"{len(ms)} routed requests, {len(errors)} wrong; "
            f"p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms"
        )
    return 1 if errors or not latencies else 0


# -- WebSocket ------------------------------------------------------------------------


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("peer closed mid-frame")
        data += chunk
    return data


def read_frame(sock):
    """(opcode, payload) of one client frame (RFC 6455: clients always mask)."""
    first, second = read_exact(sock, 2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", read_exact(sock, 2))
    elif length == 127:
        (length,) = struct.unpack("!Q", read_exact(sock, 8))
    mask = read_exact(sock, 4) if second & 0x80 else b"\0\0\0\0"
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(read_exact(sock, length)))
    return first & 0x0F, payload


def frame(opcode, payload):
    """An unmasked server frame."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


class EchoHandler(socketserver.BaseRequestHandler):
    label = "?"

    def handle(self):
        sock = self.request
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                return
            head += chunk
        key = ""
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-key":
                key = value.strip()
        if not key:
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nnot a ws")
            return
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        sock.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept.encode() + b"\r\n\r\n"
        )
        while True:
            opcode, payload = read_frame(sock)
            if opcode == 0x8:  # close: answer it, then we are done
                sock.sendall(frame(0x8, payload[:2]))
                return
            if opcode == 0x9:  # ping
                sock.sendall(frame(0xA, payload))
            elif opcode in (0x1, 0x2):
                sock.sendall(frame(opcode, self.label.encode() + b":" + payload))


def ws_echo(args):
    EchoHandler.label = args.label
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.daemon_threads = True
    # "127.0.0.1" as a dev server would write it: the shim moves it to the workspace IP.
    with socketserver.ThreadingTCPServer(("127.0.0.1", args.port), EchoHandler) as server:
        print(f"ws-echo {args.label} on {server.server_address}", flush=True)
        server.serve_forever()


def ws_client(args):
    import websocket  # websocket-client

    if args.host_route:
        kwargs = {"host": f"{args.workspace}-{args.port}.localhost"}
    else:
        kwargs = {
            "header": [f"{PORT_HEADER}: {args.port}", f"{WORKSPACE_HEADER}: {args.workspace}"]
        }
    ws = websocket.create_connection(f"ws://{args.proxy}/", timeout=5, **kwargs)
    try:
        for i in range(args.messages):
            text = f"{args.send}-{i}"
            ws.send(text)
            reply = ws.recv()
            if reply != f"{args.expect}:{text}":
                print(f"ws-client: sent {text!r}, got {reply!r}", file=sys.stderr)
                return 1
    finally:
        ws.close()
    return 0


# -- CONNECT forwarder ----------------------------------------------------------------


def pump(src, dst):
    """Copy until EOF, then half-close so the other direction can finish."""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def open_tunnel(proxy, workspace, port):
    """A socket to the proxy on which CONNECT succeeded, plus bytes read past its head."""
    upstream = socket.create_connection(proxy, timeout=5)
    upstream.sendall(
        f"CONNECT {workspace}:{port} HTTP/1.1\r\nHost: {workspace}:{port}\r\n"
        f"{PORT_HEADER}: {port}\r\n{WORKSPACE_HEADER}: {workspace}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = upstream.recv(4096)
        if not chunk:
            raise ConnectionError(f"proxy closed during CONNECT: {head!r}")
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    if head.split(b" ", 2)[1:2] != [b"200"]:
        raise ConnectionError(f"CONNECT refused: {head!r}")
    upstream.settimeout(None)
    return upstream, rest


def serve_tunnel(client, proxy, workspace, port):
    try:
        upstream, rest = open_tunnel(proxy, workspace, port)
    except OSError as exc:
        print(f"connect-forward: {exc}", file=sys.stderr, flush=True)
        client.close()
        return
    if rest:
        client.sendall(rest)
    back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
    back.start()
    pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def connect_forward(args):
    proxy = split_address(args.proxy)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    with open(args.ready, "w") as f:
        f.write(f"{listener.getsockname()[1]}\n")
    while True:
        client, _ = listener.accept()
        threading.Thread(
            target=serve_tunnel, args=(client, proxy, args.workspace, args.port), daemon=True
        ).start()


# -- command line -------------------------------------------------------------------


def parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("port-free")
    s.add_argument("host")
    s.add_argument("port", type=int)
    s.set_defaults(run=port_free)
    sub.add_parser("free-port").set_defaults(run=free_port)
    s = sub.add_parser("stress")
    s.add_argument("--proxy", required=True, help="HOST:PORT of the proxy")
    s.add_argument("--port", type=int, required=True, help="the servers' port")
    s.add_argument("--base", type=int, required=True, help="first workspace number")
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--conc", type=int, default=16)
    s.add_argument("--rounds", type=int, default=4, help="requests per workspace once up")
    s.add_argument("--deadline", type=float, default=30.0, help="seconds for all to come up")
    s.set_defaults(run=stress)
    s = sub.add_parser("ws-echo")
    s.add_argument("port", type=int)
    s.add_argument("label")
    s.set_defaults(run=ws_echo)
    s = sub.add_parser("ws-client")
    s.add_argument("--proxy", required=True)
    s.add_argument("--workspace", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--host-route", action="store_true", help="route by Host, not headers")
    s.add_argument("--send", default="hello")
    s.add_argument("--expect", required=True, help="the label the reply must carry")
    s.add_argument("--messages", type=int, default=3)
    s.set_defaults(run=ws_client)
    s = sub.add_parser("connect-forward")
    s.add_argument("--proxy", required=True)
    s.add_argument("--workspace", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--ready", required=True, help="file that receives the local port")
    s.set_defaults(run=connect_forward)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
