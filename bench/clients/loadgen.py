"""Keep-alive GET load generator, the fallback when wrk is not installed.

    python loadgen.py PORT UPSTREAM_PORT CONNS SECONDS

CONNS connections to 127.0.0.1:PORT each send `GET /ok` (with
X-Cmux-Port-Internal: UPSTREAM_PORT) one after another for SECONDS. Prints one
JSON line: requests, errors, seconds and a latency histogram (10 µs buckets),
so several processes' results can be merged. Run one process per core.
"""

import asyncio
import json
import sys
import time
from collections import Counter

BUCKET_US = 10


class Client(asyncio.Protocol):
    """One connection: send, wait for the whole response, record, repeat."""

    def __init__(self, request: bytes, stats: dict, deadline: float, done: asyncio.Future):
        self.request = request
        self.stats = stats
        self.deadline = deadline
        self.done = done
        self.buf = b""
        self.sent_at = 0.0
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self._send()

    def _send(self):
        self.sent_at = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data):
        self.buf += data
        end = response_end(self.buf)
        if end is None:
            return
        now = time.perf_counter()
        ok = self.buf.startswith(b"HTTP/1.1 200")
        self.buf = self.buf[end:]
        self.stats["requests" if ok else "errors"] += 1
        self.stats["hist"][int((now - self.sent_at) * 1e6) // BUCKET_US] += 1
        if now < self.deadline:
            self._send()
        else:
            self.transport.close()

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(None)


def response_end(buf: bytes):
    """Index just past the first complete response (Content-Length or chunked), or None."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = buf[:head_end].lower()
    start = head.find(b"content-length:")
    if start >= 0:
        stop = head.find(b"\r\n", start)
        length = int(head[start + 15 : stop if stop >= 0 else None])
        end = head_end + 4 + length
        return end if len(buf) >= end else None
    last = buf.find(b"\r\n0\r\n\r\n", head_end)
    return last + 7 if last >= 0 else None


async def run(port: int, upstream_port: int, conns: int, seconds: float) -> dict:
    loop = asyncio.get_running_loop()
    request = (
        b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Cmux-Port-Internal: %d\r\n\r\n" % upstream_port
    )
    stats = {"requests": 0, "errors": 0, "hist": Counter()}
    started = time.perf_counter()
    deadline = started + seconds
    waits = []
    for _ in range(conns):
        done = loop.create_future()
        try:
            await loop.create_connection(
                lambda d=done: Client(request, stats, deadline, d), "127.0.0.1", port
            )
        except OSError:
            stats["errors"] += 1
            continue
        waits.append(done)
    await asyncio.wait_for(asyncio.gather(*waits), seconds + 30)
    stats["seconds"] = time.perf_counter() - started
    stats["hist"] = {str(k): v for k, v in stats["hist"].items()}
    return stats


if __name__ == "__main__":
    port, upstream_port, conns = (int(a) for a in sys.argv[1:4])
    print(json.dumps(asyncio.run(run(port, upstream_port, conns, float(sys.argv[4])))))
