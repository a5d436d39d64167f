"""--workers N: SO_REUSEPORT workers under a supervising parent, through real processes."""

import signal

import psutil
import pytest
import requests
from conftest import wait_until
from integration.upstreams import Upstream, http_server, response


@pytest.fixture
def upstream():
    """An HTTP server answering every request with "hello"; yields its port."""
    with Upstream(http_server(lambda req, wire, up: wire.send(response(body=b"hello")))) as up:
        yield up.port


def _workers(pid):
    return psutil.Process(pid).children()


def _get(proxy, port):
    return requests.get(proxy.url, headers={"X-Cmux-Port-Internal": str(port)}, timeout=5)


@pytest.mark.timeout(60)
def test_two_workers_serve_and_a_dead_worker_is_replaced(start_proxy, upstream):
    proxy = start_proxy("--workers", "2")
    assert wait_until(lambda: len(_workers(proxy.pid)) == 2)
    first = {child.pid for child in _workers(proxy.pid)}
    for _ in range(20):  # new connections each: the kernel spreads them over both sockets
        assert _get(proxy, upstream).text == "hello"

    victim = next(iter(first))
    psutil.Process(victim).kill()
    assert wait_until(
        lambda: (
            len(_workers(proxy.pid)) == 2 and victim not in {c.pid for c in _workers(proxy.pid)}
        ),
        timeout=10,
    ), "the supervisor restarts a worker that died"
    for _ in range(20):
        assert _get(proxy, upstream).status_code == 200
    assert "restarting" in proxy.log()


@pytest.mark.timeout(60)
def test_sigterm_drains_every_worker_and_exits_0(start_proxy, upstream):
    proxy = start_proxy("--workers", "2")
    assert wait_until(lambda: len(_workers(proxy.pid)) == 2)
    children = _workers(proxy.pid)
    assert _get(proxy, upstream).status_code == 200
    assert proxy.stop(signal.SIGTERM) == 0
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, "no worker outlives the supervisor"
