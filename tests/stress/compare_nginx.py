"""Send every smuggling and oversize vector to cmux-gevent and to nginx; print a table.

Not a test: a comparison to run by hand from the repository's root
(`python -m tests.stress.compare_nginx`) on a machine with nginx (nginx-light)
installed. nginx runs the bench's header-router config (bench/nginx.py). Both
proxies route by X-Cmux-Port-Internal to a fresh recording upstream per vector,
so the table shows each one's answer and what, if anything, reached the
upstream. The last column says whether cmux-gevent was at least as strict as
nginx: it refused whatever nginx refused and forwarded nothing nginx did not.
"""

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import nginx
from tests.conftest import ProxyProcess, free_port, wait_for_port
from tests.integration.rawclient import send_raw
from tests.integration.recording import RecordingUpstream
from tests.integration.vectors import BAD_CHUNKS, CHUNKED_HEAD, VECTORS, P, head

CONTROLS = {  # valid requests: both proxies must forward these, or the table means nothing
    "control-get": head(b"GET / HTTP/1.1", P, b"Connection: close"),
    "control-chunked": head(
        b"POST / HTTP/1.1", P, b"Transfer-Encoding: chunked", b"Connection: close"
    )
    + b"5\r\nhello\r\n0\r\n\r\n",
}

OVERSIZE = {
    "head-70KiB-one-field": head(b"GET / HTTP/1.1", P, b"X-Big: " + b"a" * 70 * 1024),
    "head-70KiB-many-fields": head(
        b"GET / HTTP/1.1", P, *[b"X-F%d: %s" % (i, b"a" * 1000) for i in range(70)]
    ),
    "101-header-fields": head(b"GET / HTTP/1.1", P, *[b"X-H%d: v" % i for i in range(101)]),
    "request-line-9KiB": head(b"GET /" + b"p" * 9 * 1024 + b" HTTP/1.1", P),
}


class Nginx:
    """nginx as the bench runs it (header router, 1 worker), on a free port, in a temp dir."""

    def __init__(self, nginx_bin: str):
        self.dir = Path(tempfile.mkdtemp(prefix="cmp-nginx-"))
        self.port = free_port()
        conf = nginx.proxy_conf(
            self.dir, "nginx", self.port, workers=1, stream=None, tcp_port=0, origin_port=0
        )
        self.proc = subprocess.Popen(
            nginx.argv(nginx_bin, conf, self.dir, "nginx"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port("127.0.0.1", self.port, proc=self.proc)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def with_host(vector: bytes) -> bytes:
    """nginx refuses an HTTP/1.1 request without Host: add one so the vector itself is judged."""
    if b"\nhost:" in vector.lower():
        return vector
    end = vector.find(b"\n") + 1
    return (
        vector[:end]
        + (b"Host: cmp\r\n" if vector[end - 2 : end] == b"\r\n" else b"Host: cmp\n")
        + vector[end:]
    )


def outcome(port: int, vector: bytes):
    """(answer, what reached the upstream) for one vector through the proxy on `port`."""
    with RecordingUpstream() as upstream:
        reply = send_raw(port, vector % {b"port": upstream.port}, timeout=3)
        time.sleep(0.3)  # let a forwarded head land before looking
        received = upstream.received()
    answer = str(reply.status) if reply.status else "-"
    answer += "+close" if reply.closed else ""
    if not received:
        reached = "nothing"
    elif any(bad in received for bad in (b"AAAAA", b"zz", b"EVIL", b"hello!")):
        reached = "BAD BYTES"
    else:
        body = received.partition(b"\r\n\r\n")[2]
        reached = f"head + {len(body)} B body" if body else "head only"
    return reply.status, answer, reached


def refused(status) -> bool:
    return status is None or status >= 400


def main() -> int:
    nginx_bin = nginx.nginx_path()
    if not nginx_bin:
        sys.exit("nginx is not on PATH (apt-get install nginx-light)")
    vectors = dict(CONTROLS)
    vectors.update(VECTORS)
    vectors.update({f"chunk-{k}": CHUNKED_HEAD + v for k, v in BAD_CHUNKS.items()})
    vectors.update(OVERSIZE)
    cmux = ProxyProcess([], log_path=None)
    reference = Nginx(nginx_bin)
    rows, weaker = [], 0
    try:
        for name, vector in vectors.items():
            vector = with_host(vector)
            c_status, c_answer, c_reached = outcome(cmux.port, vector)
            n_status, n_answer, n_reached = outcome(reference.port, vector)
            strict = (refused(c_status) or not refused(n_status)) and (
                c_reached != "BAD BYTES" or n_reached == "BAD BYTES"
            )
            weaker += not strict and name not in CONTROLS
            verdict = "control" if name in CONTROLS else "yes" if strict else "NO"
            rows.append((name, c_answer, c_reached, n_answer, n_reached, verdict))
    finally:
        cmux.stop()
        reference.stop()
    header = (
        "vector",
        "cmux-gevent",
        "cmux upstream got",
        "nginx",
        "nginx upstream got",
        ">= strict",
    )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
    print(f"\n{len(rows)} vectors; cmux-gevent less strict than nginx on {weaker}")
    return 1 if weaker else 0


if __name__ == "__main__":
    sys.exit(main())
