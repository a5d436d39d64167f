"""Python HTTP origin, used when nginx is not installed.

    python origin.py PORT BULK_FILE

GET /ok answers "ok"; GET /bulk sends BULK_FILE (a sparse file) with sendfile,
as nginx would. HTTP/1.1 keep-alive; `Connection: close` is honoured. Requests
are assumed to have no body (the bench only sends GETs here).
"""

import asyncio
import os
import sys

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
MAX_HEAD = 64 * 1024  # more than any bench request; a bigger head is a client bug


class Origin(asyncio.Protocol):
    def __init__(self, bulk_path: str):
        self.bulk_path = bulk_path
        self.buf = b""
        self.transport = None
        self.busy = False  # a sendfile is running; parse the next request afterwards

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        if len(self.buf) > MAX_HEAD:
            self.transport.close()
            return
        self._serve()

    def _serve(self):
        while not self.busy and b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
            close = b"connection: close" in head.lower()
            if path == b"/bulk":
                self.busy = True
                self.transport.pause_reading()
                body = open(self.bulk_path, "rb")  # noqa: SIM115 -- _send_bulk closes it
                asyncio.ensure_future(self._send_bulk(body, close))
                return
            self.transport.write(OK if path == b"/ok" else NOT_FOUND)
            if close:
                self.transport.close()
                return

    async def _send_bulk(self, body, close: bool):
        size = os.fstat(body.fileno()).st_size
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        self.transport.write(head + b"Content-Length: %d\r\n\r\n" % size)
        try:
            with body:
                await asyncio.get_running_loop().sendfile(self.transport, body)
        except (ConnectionError, RuntimeError):
            self.transport.abort()
            return
        if close or self.transport.is_closing():
            self.transport.close()
            return
        self.busy = False
        self.transport.resume_reading()
        self._serve()


async def main(port: int, bulk_path: str):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Origin(bulk_path), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
    except KeyboardInterrupt:
        pass
