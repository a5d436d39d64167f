"""relay.Tunnel between real loopback TCP connections, in this process.

A long-lived WebSocket (an HMR channel) may move a large payload once and then
small messages for hours: those must go back to the watcher callback's plain
copy, with no greenlet spawned per message, while large transfers still splice.
"""

import hashlib
import os

import gevent
import pytest
from gevent import socket

from cmux_gevent import relay

pytestmark = pytest.mark.timeout(30)


def tcp_pair():
    """(outer, inner): two ends of one loopback TCP connection, as gevent sockets."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    outer = socket.create_connection(listener.getsockname())
    inner, _ = listener.accept()
    listener.close()
    return outer, inner


@pytest.fixture
def tunnel():
    """(client end, upstream end, Tunnel) with the tunnel relaying between them."""
    client, client_inner = tcp_pair()
    upstream, upstream_inner = tcp_pair()
    closed = []
    tunnel = relay.Tunnel(
        client_inner.detach(), upstream_inner.detach(), b"", b"", None, lambda *m: closed.append(m)
    )
    tunnel.start()
    yield client, upstream, tunnel
    tunnel.close()
    client.close()
    upstream.close()
    assert closed, "the tunnel reported its close"


def recv_exactly(sock, size):
    chunks = []
    while size:
        data = sock.recv(min(size, 1 << 20))
        assert data, "peer closed early"
        chunks.append(data)
        size -= len(data)
    return b"".join(chunks)


def bulk(src, dst, size):
    """Send `size` random bytes src → dst through the tunnel; True if they arrived intact."""
    payload = os.urandom(size)
    sender = gevent.spawn(src.sendall, payload)
    got = recv_exactly(dst, size)
    sender.get()
    return hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


@pytest.fixture
def counted(monkeypatch):
    """Counts of greenlets spawned and splice(2) calls made by relay.py."""
    counts = {"spawn": 0, "splice": 0}
    spawn, splice = relay.gevent.spawn, relay._splice

    def counting_spawn(*args, **kwargs):
        counts["spawn"] += 1
        return spawn(*args, **kwargs)

    def counting_splice(*args, **kwargs):
        counts["splice"] += 1
        return splice(*args, **kwargs)

    monkeypatch.setattr(relay.gevent, "spawn", counting_spawn)
    monkeypatch.setattr(relay, "_splice", counting_splice)
    return counts


@pytest.mark.skipif(not relay.can_splice, reason="needs os.splice")
def test_large_transfers_splice_and_later_small_messages_spawn_nothing(tunnel, counted):
    client, upstream, _ = tunnel
    assert bulk(client, upstream, 4 << 20)
    assert counted["splice"] > 0, "a 4 MiB transfer went through splice"

    counted["spawn"] = 0
    for i in range(50):  # an HMR channel after its first big payload
        message = b"update %d" % i
        client.sendall(message)
        assert recv_exactly(upstream, len(message)) == message
        upstream.sendall(b"ack %d" % i)
        assert recv_exactly(client, len(b"ack %d" % i)) == b"ack %d" % i
    # At most the first message after the transfer resumes the splice burst; the rest are
    # copied by the watcher callback (before: one greenlet per message, for ever).
    assert counted["spawn"] <= 1, "small messages are copied by the watcher callback"

    counted["splice"] = 0
    assert bulk(client, upstream, 4 << 20) and bulk(upstream, client, 4 << 20)
    assert counted["splice"] > 0, "a large transfer later on splices again"
