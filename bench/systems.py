"""The upstreams every system shares, and the systems compared (direct, cmux, nginx).

A system answers one question for the scenarios: where does a client connect to
reach upstream port P (`http_port(P)`), and how does it tunnel raw bytes
(`tunnel`)? `direct` connects to the upstream itself: the limit of the box.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nginx
from procs import ProcessSet, free_port, wait_for_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ORIGIN_PY = HERE / "upstreams" / "origin.py"
WS_ECHO_PY = HERE / "upstreams" / "ws_echo.py"


class Upstreams:
    """The HTTP origin (nginx with sendfile if installed, else Python) and the WebSocket echo
    server."""

    def __init__(self, procs: ProcessSet, workdir: Path, bulk_size: int, nginx_bin: str | None):
        www = workdir / "www"
        www.mkdir(exist_ok=True)
        self.bulk_path = www / "bulk"
        with open(self.bulk_path, "wb") as bulk:
            bulk.truncate(bulk_size)  # sparse: read from zero pages, never from disk
        self.origin_port = free_port()
        if nginx_bin:
            conf = nginx.origin_conf(workdir, self.origin_port)
            argv = nginx.argv(nginx_bin, conf, workdir, "origin-nginx")
            self.origin_kind = "nginx"
        else:
            argv = [sys.executable, str(ORIGIN_PY), str(self.origin_port), str(self.bulk_path)]
            self.origin_kind = "python"
        origin = procs.start("origin", argv)
        self.ws_port = free_port()
        ws = procs.start("ws-echo", [sys.executable, str(WS_ECHO_PY), str(self.ws_port)])
        wait_for_port(self.origin_port, origin.popen)
        wait_for_port(self.ws_port, ws.popen)


class System:
    """Base: a named system, possibly backed by a process tree started on demand."""

    name = "?"
    tunnel = "connect"  # 'connect' (CONNECT with the header), 'tcp' (a relay port), or None

    def __init__(self, procs: ProcessSet):
        self.procs = procs
        self.proc = None
        self.port = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def http_port(self, upstream_port: int) -> int:
        return self.port

    def start(self) -> None:
        self.port = free_port()
        self.proc = self.procs.start(self.name, self.argv(), **self.spawn_options())
        wait_for_port(self.port, self.proc.popen)
        for port in self.extra_ports():
            wait_for_port(port, self.proc.popen)

    def stop(self) -> None:
        if self.proc:
            self.procs.stop(self.proc)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def argv(self) -> list[str]:
        raise NotImplementedError

    def spawn_options(self) -> dict:
        return {}

    def extra_ports(self) -> list[int]:
        return []


class Direct(System):
    """No proxy: clients talk to the upstream."""

    name = "direct"
    tunnel = "direct"

    def http_port(self, upstream_port: int) -> int:
        return upstream_port

    def start(self) -> None:
        pass


class Cmux(System):
    """cmux-gevent, started as `CMD --listen 127.0.0.1:PORT [ARGS]`."""

    def __init__(self, procs: ProcessSet, name: str, cmd: list[str], args: list[str]):
        super().__init__(procs)
        self.name, self.cmd, self.args = name, cmd, args

    def argv(self) -> list[str]:
        return [*self.cmd, "--listen", f"127.0.0.1:{self.port}", *self.args]

    def spawn_options(self) -> dict:
        """Run from the tree (PYTHONPATH=repo) and ignore a CMUX_LISTEN from the caller's shell."""
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, PYTHONPATH=path)
        env.pop("CMUX_LISTEN", None)
        return {"env": env, "cwd": str(REPO)}


class Nginx(System):
    """nginx as a header router, with a TCP relay (stream{}) for the tunnel scenario if it has
    the module."""

    def __init__(
        self, procs: ProcessSet, nginx_bin: str, workdir: Path, origin_port: int, workers: int = 1
    ):
        super().__init__(procs)
        self.name = "nginx" if workers == 1 else f"nginx-w{workers}"
        self.nginx_bin, self.workdir, self.origin_port, self.workers = (
            nginx_bin,
            workdir,
            origin_port,
            workers,
        )
        self.stream = nginx.stream_load_line(nginx_bin)
        self.tunnel = "tcp" if self.stream is not None else None
        self.tcp_port = 0

    def argv(self) -> list[str]:
        self.tcp_port = free_port()
        conf = nginx.proxy_conf(
            self.workdir,
            self.name,
            self.port,
            self.workers,
            self.stream,
            self.tcp_port,
            self.origin_port,
        )
        return nginx.argv(self.nginx_bin, conf, self.workdir, self.name)

    def extra_ports(self) -> list[int]:
        return [self.tcp_port] if self.stream is not None else []
