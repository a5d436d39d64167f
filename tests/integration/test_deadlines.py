"""deadlines.py on real socket pairs: timed reads end on time, and only the late ones.

The proxy's reads share one sweeping timer instead of a gevent Timeout each; a
wait may end up to SWEEP_SECONDS after its deadline, never before it, and a read
that got its bytes must never be hit by a timeout meant for it later.
"""

import time

import gevent
import pytest
from gevent import socket

from cmux_gevent import deadlines

SLACK = deadlines.SWEEP_SECONDS + 0.25  # the sweep's granularity plus a loaded machine


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def _timed_read(sock, timeout, wait_first=False):
    """(outcome, seconds): the bytes read, or "timeout"."""
    started = time.monotonic()
    buffer = bytearray(100)
    try:
        got = deadlines.recv_into(sock, buffer, timeout, wait_first)
        outcome = bytes(buffer[:got])
    except socket.timeout:
        outcome = "timeout"
    return outcome, time.monotonic() - started


def test_a_silent_peer_times_out_after_the_deadline_not_before(pair):
    outcome, took = _timed_read(pair[0], 0.4)
    assert outcome == "timeout"
    assert 0.4 <= took <= 0.4 + SLACK


def test_bytes_before_the_deadline_are_returned_and_no_late_timeout_follows(pair):
    a, b = pair
    gevent.spawn_later(0.1, b.sendall, b"hello")

    def read_then_idle():
        outcome = _timed_read(a, 0.5, wait_first=True)[0]
        gevent.sleep(0.5 + SLACK)  # past the read's deadline: nothing may be thrown in here
        return outcome

    assert gevent.spawn(read_then_idle).get(timeout=5) == b"hello"


def test_many_waits_each_end_in_their_own_window_while_one_gets_its_bytes():
    pairs = [socket.socketpair() for _ in range(30)]
    try:
        timeouts = [0.2 + 0.05 * (i % 10) for i in range(29)]
        readers = [gevent.spawn(_timed_read, a, t) for (a, _), t in zip(pairs, timeouts)]
        lucky = gevent.spawn(_timed_read, pairs[29][0], 2.0)
        gevent.spawn_later(0.3, pairs[29][1].sendall, b"x")
        gevent.joinall([*readers, lucky], timeout=10, raise_error=True)
        for reader, timeout in zip(readers, timeouts):
            outcome, took = reader.value
            assert outcome == "timeout"
            assert timeout <= took <= timeout + SLACK
        assert lucky.value[0] == b"x"
        assert lucky.value[1] < 1.0
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_no_timeout_waits_as_long_as_it_takes(pair):
    a, b = pair
    gevent.spawn_later(0.6, b.sendall, b"late")
    assert _timed_read(a, None)[0] == b"late"


def test_eof_and_bytes_already_waiting_are_read_at_once(pair):
    a, b = pair
    b.sendall(b"ready")
    assert _timed_read(a, 1.0, wait_first=True)[0] == b"ready"
    b.close()
    outcome, took = _timed_read(a, 1.0)
    assert outcome == b""
    assert took < 0.2


def test_recv_has_the_same_contract(pair):
    a, b = pair
    with pytest.raises(socket.timeout):
        deadlines.recv(a, 10, 0.2)
    b.sendall(b"abc")
    assert deadlines.recv(a, 10, 0.2) == b"abc"
