"""Processes the bench starts, and what it measures about them.

Every child runs in its own session, so stopping one means signalling exactly
its process group (whose id is the child's PID): nginx's workers and
cmux-gevent's `--workers` children go with their parent, nothing else does.
`ProcessSet.stop_all()` runs in a `finally`, so Ctrl-C and SIGTERM clean up too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil

START_TIMEOUT = 20.0  # a cold `python -m cmux_gevent` on a busy 2-core box takes ~1 s
STOP_TIMEOUT = 10.0  # cmux-gevent drains for up to --drain-timeout (10 s) on SIGTERM


def free_port() -> int:
    """A loopback port nothing listens on right now (bind to 0 and release it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = START_TIMEOUT):
    """Poll until 127.0.0.1:port accepts, or raise (also when proc exited first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"127.0.0.1:{port} did not accept connections within {timeout:.0f}s")


class Proc:
    """One started child: its Popen, its log file, and its stop()."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env=None, cwd=None, pipes=False):
        """pipes=True: stdin and stdout are pipes (for a client the bench talks to);
        stderr is logged."""
        self.name = name
        self.argv = argv
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 -- closed by stop()
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 400) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the child's process group, SIGKILL it if it lingers; idempotent."""
        if self.popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.popen.wait(5)
        else:
            self._signal_group(signal.SIGKILL)  # a forked worker may outlive its parent
        for stream in (self.popen.stdin, self.popen.stdout, self._log):
            if stream:
                stream.close()

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class ProcessSet:
    """Everything started during a run, stopped in reverse order."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        self.history: list[dict] = []  # every start, for the results file (and leak checks)

    def start(self, name: str, argv: list[str], **kwargs) -> Proc:
        proc = Proc(name, argv, self.log_dir, **kwargs)
        self.procs.append(proc)
        self.history.append({"name": name, "pid": proc.pid, "argv": argv})
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        """Stop everything; a second Ctrl-C must not cut the cleanup short."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while self.procs:
            self.procs.pop().stop()


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live descendants."""
    total = 0.0
    for proc in _tree(pid):
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and its live descendants."""
    total = 0
    for proc in _tree(pid):
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it); returns it."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def interrupt_on_signals() -> None:
    """SIGINT and SIGTERM unwind as KeyboardInterrupt, so the `finally` that stops children runs.

    SIGINT explicitly too: a shell starts background jobs with SIGINT ignored,
    and Python keeps an inherited SIG_IGN.
    """

    def handler(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
