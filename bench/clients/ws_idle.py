"""Hold many idle WebSocket connections open from one asyncio process.

    python ws_idle.py PORT UPSTREAM_PORT COUNT

Opens COUNT WebSockets to 127.0.0.1:PORT (200 handshakes at a time), checks
each 101 and its Sec-WebSocket-Accept, prints `{"opened": n, "failed": m}` and
then holds them until stdin closes (or HOLD_SECONDS pass), then closes them.
"""

import asyncio
import base64
import hashlib
import json
import os
import resource
import sys

CONCURRENT_HANDSHAKES = 200
HANDSHAKE_TIMEOUT = 30.0
HOLD_SECONDS = 600  # an orphaned client must not hold connections forever
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def open_one(port: int, upstream_port: int):
    key = base64.b64encode(os.urandom(16))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /idle HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
        b"X-Cmux-Port-Internal: %d\r\n\r\n" % (key, upstream_port)
    )
    head = await reader.readuntil(b"\r\n\r\n")
    expected = base64.b64encode(hashlib.sha1(key + GUID).digest())
    if not head.startswith(b"HTTP/1.1 101") or expected not in head:
        writer.close()
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode("latin-1"))
    return writer


async def main(port: int, upstream_port: int, count: int):
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gate = asyncio.Semaphore(CONCURRENT_HANDSHAKES)
    errors = []

    async def guarded():
        async with gate:
            try:
                return await asyncio.wait_for(open_one(port, upstream_port), HANDSHAKE_TIMEOUT)
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
                errors.append(repr(exc))
                return None

    writers = [w for w in await asyncio.gather(*(guarded() for _ in range(count))) if w]
    print(
        json.dumps({"opened": len(writers), "failed": count - len(writers), "errors": errors[:3]})
    )
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    await asyncio.wait([stdin_closed], timeout=HOLD_SECONDS)
    for writer in writers:
        writer.close()
    os._exit(0)  # skip waiting on the executor thread if the hold timed out


if __name__ == "__main__":
    asyncio.run(main(*(int(a) for a in sys.argv[1:4])))
