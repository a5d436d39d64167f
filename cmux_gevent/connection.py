"""The per-client greenlet: read a head, route it, relay the exchange, repeat.

Blocking-style code over gevent sockets. Protocol decisions are made by the pure
modules (parser, head, route); this module only reads, calls them and writes.
"""

import time

import gevent
from gevent import socket

from . import head as h
from .accesslog import Exchange
from .body import (
    ConnectionGone,
    MessageReader,
    Uploader,
    copy_events,
    copy_raw,
    peek,
    send,
    send_all,
    send_pieces,
    take_queued_body,
)
from .deadlines import SEND_SECONDS
from .errors import ClientError, ProxyError, UpstreamError, render_error
from .parser import END, request_parser
from .pool import connect
from .relay import Tunnel
from .route import origin_form, route

CONNECT_ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"
SWITCHING = b"Connection: Upgrade"
WATCH_CLIENT_AFTER = 0.5  # seconds an upstream may think before we watch the client


class ClientConnection:
    """One client connection, served request by request, in order."""

    def __init__(self, sock, address, proxy):
        self.sock = sock
        self.peer = (address[0] if isinstance(address, tuple) else str(address)).encode()
        self.proxy = proxy
        self.config = proxy.config
        self.reader = MessageReader(sock, request_parser(proxy.config.limits))
        self.idle = True  # waiting for a request: a draining server may close us at once
        self.responding = False  # some response bytes went out: errors can only close
        self.tunnel = None  # set when the connection became a WebSocket/CONNECT tunnel
        self._watch = None

    # -- the loop ----------------------------------------------------------------

    def serve(self) -> None:
        """Serve requests until the client or the protocol ends the connection."""
        sock = self.sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(SEND_SECONDS)  # reads have their own deadlines
        try:
            while self._serve_one():
                pass
        except ConnectionGone:
            pass
        finally:
            if self._watch is not None:
                self._watch.close()
            sock.close()  # a no-op once a tunnel has taken the descriptor

    def close_now(self) -> None:
        """End this connection from outside (drain): its greenlet sees EOF and returns."""
        if self.tunnel is not None:
            self.tunnel.close()
            return
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _serve_one(self) -> bool:
        """One exchange; True if the connection stays open for another."""
        try:
            head = self._read_head()
        except ProxyError as error:
            exchange = Exchange(None)
            self._reply_error(exchange, error)
            self._access_log(exchange)
            return False
        if head is None:
            return False
        exchange = Exchange(head)
        self.responding = False
        try:
            h.check_request(head)
            head = exchange.head = origin_form(head, self.config.listen)
            exchange.target = target = route(head, self.config)
            if head.method == b"CONNECT":
                return self._connect(exchange, target)
            if head.upgrade:
                return self._upgrade(exchange, target)
            return self._forward(exchange, target)
        except ProxyError as error:
            self._reply_error(exchange, error)
            return False
        except ConnectionGone as gone:
            exchange.error = str(gone)
            return False
        finally:
            if self.tunnel is None:  # a tunnel logs its exchange when it closes
                self._access_log(exchange)

    def _read_head(self):
        """The next request head, or None when the client is done (EOF or idle timeout)."""
        events = self.reader.parser.events
        while events and events[0] is END:  # the end of a bodiless previous request
            events.popleft()
        if events:
            return events.popleft()
        self.idle = True
        if self.proxy.draining:
            return None
        fresh = self.reader.received == 0
        started = time.monotonic() if fresh else 0.0
        try:
            if fresh:
                self.reader.read_more(self.config.head_timeout)
            else:  # we just answered: the client's next request cannot be here yet
                self.reader.read_more(self.config.keepalive_timeout, wait_first=True)
        except (socket.timeout, ConnectionGone):
            return None
        self.idle = False
        if events and events[0] is not END:
            return events.popleft()  # the usual case: the whole head came in one read
        # A new connection's first head is due head_timeout after accept (a slowloris
        # must not get twice that by waiting before its first byte); a kept-alive
        # connection's next head is due head_timeout after its first byte.
        deadline = (started if fresh else time.monotonic()) + self.config.head_timeout
        while not events or events[0] is END:
            if events:
                events.popleft()
                continue
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise socket.timeout
                self.reader.read_more(remaining)
            except socket.timeout:
                raise ClientError(408, "request head not received in time") from None
        return events.popleft()

    # -- plain HTTP --------------------------------------------------------------

    def _forward(self, exchange: Exchange, target) -> bool:
        head = exchange.head
        framing, _ = h.request_framing(head)
        lines = h.end_to_end(head)
        if b"host" not in head.names:
            lines.append(b"Host: " + target.name.encode())
        out = h.serialize_request(head, lines, framing)
        upstream, reused = self.proxy.pool.acquire(target.host, target.port)
        if framing != h.NONE:
            uploader = Uploader(
                self.reader, upstream.sock, framing == h.CHUNKED, self.config.keepalive_timeout
            )
            return self._exchange(exchange, target, upstream, out, uploader)
        try:
            return self._exchange(exchange, target, upstream, out, None)
        except _RetryFresh:
            if not reused:
                raise
        # A pooled connection the upstream had closed: nothing was acted on, send again.
        upstream = self.proxy.pool.open(target.host, target.port)
        return self._exchange(exchange, target, upstream, out, None)

    def _exchange(self, exchange, target, upstream, out, uploader) -> bool:
        """Send the request, relay the response; True if the client connection stays open.

        `upstream` is the upstream connection's MessageReader (socket and response parser).
        """
        reusable = False
        try:
            send_upstream(upstream.sock, out, target)
            if uploader is not None:
                uploader.start()
            try:
                reusable, keep = self._relay_response(exchange, target, upstream)
            except UpstreamError:
                if uploader is not None and uploader.error is not None:
                    raise uploader.error from None  # the upstream went because the body was bad
                raise
            if uploader is not None and not uploader.finished():
                reusable = keep = False
            return keep
        finally:
            self._unwatch_client()
            if reusable:
                self.proxy.pool.release(target.host, target.port, upstream)
            else:
                upstream.sock.close()

    def _relay_response(self, exchange, target, reader):
        """Relay the upstream's response; returns (upstream reusable, client keep-alive)."""
        response = self._final_head(reader, target)
        keep = exchange.head.keep_alive and not self.proxy.draining
        framing, keep = self._send_response(exchange, reader, response, keep)
        reusable = response.keep_alive and framing != h.CLOSE and not reader.parser.events
        return reusable, keep

    def _send_response(self, exchange, reader, response, keep: bool):
        """Send `response` and its body framed for this client; returns (framing, keep-alive).

        A body whose end only the upstream's close marks is re-chunked for HTTP/1.1
        clients; an HTTP/1.0 client gets it as is, and the connection then closes.
        """
        head = exchange.head
        framing, length = h.response_framing(head.method, response)
        client_11 = head.version == "1.1"
        open_ended = framing in (h.CHUNKED, h.CLOSE)
        chunked_out = open_ended and client_11
        keep = keep and (client_11 or not open_ended)
        extra = [b"Transfer-Encoding: chunked"] if chunked_out else []
        if not keep:
            extra.append(b"Connection: close")
        elif not client_11:
            extra.append(b"Connection: keep-alive")
        exchange.status = response.status
        self.responding = True
        out = h.serialize_response(response, h.end_to_end(response), extra)
        exchange.sent = self._relay_body(reader, framing, length, chunked_out, out)
        return framing, keep

    def _final_head(self, reader, target):
        """Read the upstream's final response head, relaying 1xx interim ones."""
        deadline = time.monotonic() + self.config.response_timeout
        while True:
            try:
                response = self._upstream_event(reader, target, deadline)
            except ConnectionGone as gone:
                if reader.received == 0:
                    raise _RetryFresh(target, gone) from None
                raise UpstreamError(
                    f"upstream request error: {target.name} closed the connection: {gone}"
                ) from None
            if response.status >= 200 or response.status == 101:
                return response
            self._upstream_event(reader, target, deadline)  # the END of the interim response
            send(self.sock, h.serialize_response(response, h.end_to_end(response), []))

    def _upstream_event(self, reader, target, deadline):
        """The upstream's next event by `deadline` (504 after it).

        Most upstreams answer within milliseconds; only a wait longer than
        WATCH_CLIENT_AFTER arms the watcher that notices a client hanging up.
        """
        events = reader.parser.events
        while not events:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UpstreamError(
                    f"upstream request error: {target.name} sent no response in time", status=504
                )
            watching = self._watch is not None and self._watch.active
            try:
                reader.read_more(
                    remaining if watching else min(remaining, WATCH_CLIENT_AFTER),
                    wait_first=reader.received == 0,  # the request just left
                )
            except socket.timeout:
                self._watch_client(reader.sock)
        return events.popleft()

    def _relay_body(self, reader, framing, length, chunked_out, head: bytes) -> int:
        """Send `head` and the body; head and already-parsed body leave in one write.

        The parser's END of a bodiless response is taken too, so that nothing is left
        queued and the upstream connection can be pooled.
        """
        pieces = [head]
        sent, ended = take_queued_body(reader, chunked_out, pieces)
        send_pieces(self.sock, pieces)
        if ended or framing == h.NONE:
            return sent
        if framing != h.LENGTH:  # a stream (SSE, long poll) may idle: notice a client leaving
            self._watch_client(reader.sock)
        if framing == h.CHUNKED:
            return sent + copy_events(reader, self.sock, chunked_out, None)
        remaining = length - sent if framing == h.LENGTH else None
        return sent + copy_raw(reader.sock, self.sock, remaining, chunked_out, None)

    # -- upgrades and CONNECT ------------------------------------------------------

    def _upgrade(self, exchange, target) -> bool:
        head = exchange.head
        lines = h.end_to_end(head, keep=frozenset({b"upgrade"}))
        out = h.serialize_request(head, lines, h.NONE, connection=b"Upgrade")
        reader = self.proxy.pool.open(target.host, target.port)  # never pooled: it upgrades
        try:
            send_upstream(reader.sock, out, target)
            response = self._final_head(reader, target)
            if response.status != 101:
                return self._refused_upgrade(exchange, reader, response)
            exchange.status = 101
            self.responding = True
            keep = frozenset({b"upgrade"})
            send(
                self.sock,
                h.serialize_response(response, h.end_to_end(response, keep), [SWITCHING]),
            )
            self._tunnel(exchange, reader.sock, reader.parser.upgraded_rest or b"")
            return False
        finally:
            reader.sock.close()

    def _refused_upgrade(self, exchange, reader, response) -> bool:
        """The upstream answered the upgrade with a normal response: relay it, then close."""
        self._send_response(exchange, reader, response, keep=False)
        return False

    def _connect(self, exchange, target) -> bool:
        upstream = connect(target.host, target.port, self.config.connect_timeout)
        try:
            exchange.status = 200
            self.responding = True
            send(self.sock, CONNECT_ESTABLISHED)
            self._tunnel(exchange, upstream, b"")
            return False
        finally:
            upstream.close()

    def _tunnel(self, exchange, upstream, upstream_rest) -> None:
        """Hand both sockets to a Tunnel: this greenlet ends, the tunnel lives on watchers."""
        client_rest = self.reader.parser.upgraded_rest or b""

        def closed(_up: int, down: int) -> None:
            exchange.sent = down
            self._access_log(exchange)
            self.proxy.release(self)

        self._unwatch_client()
        head = exchange.head  # an idle tunnel keeps only what its log line needs
        exchange.head = h.Head(head.method, head.target, head.version, [], False, False)
        self.reader = None
        self.tunnel = Tunnel(
            self.sock.detach(),
            upstream.detach(),
            client_rest,
            upstream_rest,
            self.config.tunnel_idle_timeout,
            closed,
        )
        self.tunnel.start()

    # -- client liveness while waiting on an upstream ------------------------------

    def _watch_client(self, upstream) -> None:
        """While the upstream works, notice a client that hangs up and abandon the upstream."""
        if self._watch is None:
            self._watch = gevent.get_hub().loop.io(self.sock.fileno(), 1)
        self._watch.start(self._client_readable, upstream)

    def _unwatch_client(self) -> None:
        if self._watch is not None:
            self._watch.stop()

    def _client_readable(self, upstream) -> None:
        self._watch.stop()
        if peek(self.sock) != b"":
            return  # pipelined bytes: they wait for their turn
        try:
            upstream.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- replies and logging -------------------------------------------------------

    def _reply_error(self, exchange, error: ProxyError) -> None:
        exchange.status = error.status
        exchange.error = error.reason
        if self.responding:
            return  # bytes went out already: closing is the only honest signal left
        try:
            self.sock.sendall(render_error(error))
        except OSError:
            pass

    def _access_log(self, exchange) -> None:
        if self.proxy.access is not None:
            self.proxy.access.record(self.peer, exchange)


class _RetryFresh(UpstreamError):
    """The upstream connection died before any response byte: a pooled one may be retried."""

    def __init__(self, target, cause):
        super().__init__(f"upstream request error: {target.name} closed the connection: {cause}")


def send_upstream(upstream, data: bytes, target) -> None:
    try:
        send_all(upstream, data)
    except OSError as exc:
        raise _RetryFresh(target, exc) from None
