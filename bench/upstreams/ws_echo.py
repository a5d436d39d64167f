"""Minimal WebSocket echo server (RFC 6455 handshake, unfragmented frames).

    python ws_echo.py PORT

Completes the handshake for any GET with Sec-WebSocket-Key, then echoes text
and binary frames, answers ping with pong and close with close. Enough for the
idle-connection scenario, which only needs upgraded connections that stay open.
"""

import asyncio
import base64
import hashlib
import resource
import sys

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 16 * 1024
MAX_FRAME = 1 << 20  # the bench sends no large messages


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key.strip() + GUID).digest())


def handshake_reply(head: bytes) -> bytes:
    """The 101 answer to a request head, or a 400 when it is not a WebSocket request."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            return (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept_key(value) + b"\r\n\r\n"
            )
    return b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def parse_frame(buf: bytes):
    """(opcode, payload, rest) for the first complete client frame, or None if incomplete."""
    if len(buf) < 2:
        return None
    opcode, length, pos = buf[0] & 0x0F, buf[1] & 0x7F, 2
    if length == 126:
        if len(buf) < 4:
            return None
        length, pos = int.from_bytes(buf[2:4], "big"), 4
    elif length == 127:
        if len(buf) < 10:
            return None
        length, pos = int.from_bytes(buf[2:10], "big"), 10
    if length > MAX_FRAME:
        raise ValueError("frame too large")
    masked = buf[1] & 0x80
    mask = buf[pos : pos + 4] if masked else b"\0\0\0\0"
    pos += 4 if masked else 0
    if len(buf) < pos + length:
        return None
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(buf[pos : pos + length]))
    return opcode, payload, buf[pos + length :]


def server_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        size = bytes([n])
    elif n < 65536:
        size = bytes([126]) + n.to_bytes(2, "big")
    else:
        size = bytes([127]) + n.to_bytes(8, "big")
    return bytes([0x80 | opcode]) + size + payload


class Echo(asyncio.Protocol):
    def __init__(self):
        self.buf = b""
        self.upgraded = False
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        if not self.upgraded:
            if b"\r\n\r\n" not in self.buf:
                if len(self.buf) > MAX_HEAD:
                    self.transport.close()
                return
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            reply = handshake_reply(head)
            self.transport.write(reply)
            if not reply.startswith(b"HTTP/1.1 101"):
                self.transport.close()
                return
            self.upgraded = True
        self._echo()

    def _echo(self):
        try:
            while (frame := parse_frame(self.buf)) is not None:
                opcode, payload, self.buf = frame
                if opcode == 0x8:
                    self.transport.write(server_frame(0x8, payload[:2]))
                    self.transport.close()
                    return
                self.transport.write(server_frame(0xA if opcode == 0x9 else opcode, payload))
        except ValueError:
            self.transport.close()


async def main(port: int):
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1])))
    except KeyboardInterrupt:
        pass
