"""Running commands under the LD_PRELOAD workspace shim (libworkspace_net.so).

The shim (preload/workspace_net.c) moves a process's loopback networking onto
its workspace's address: binds to 0.0.0.0 / 127.0.0.1 / :: / ::1 and connects
to 127.0.0.1 / ::1 use 127.18.x.y (see cmux_gevent.workspace.workspace_ip), and
getaddrinfo("localhost") answers with it.

Pure Python, no gevent: the CLI uses it for `cmux-gevent run`, `ip` and
`preload-path`.
"""

import os
import signal
import subprocess
import sys
import threading

from .workspace import workspace_ip

SHIM_NAME = "libworkspace_net.so"
LIB_ENV = "CMUX_PRELOAD_LIB"
WORKSPACE_ENV = "CMUX_WORKSPACE_INTERNAL"
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_HERE = os.path.dirname(os.path.abspath(__file__))


def _candidates():
    """(where, path) pairs in lookup order, after CMUX_PRELOAD_LIB."""
    return [
        ("installed package", os.path.join(_HERE, SHIM_NAME)),
        ("source checkout", os.path.join(os.path.dirname(_HERE), "preload", SHIM_NAME)),
    ]


def library_path() -> str:
    """The absolute path of the shim to preload.

    `$CMUX_PRELOAD_LIB` if set (it must exist), else libworkspace_net.so next
    to this module (installed by `pip install .`), else
    <repo>/preload/libworkspace_net.so (source checkout, `make -C preload`).
    """
    override = os.environ.get(LIB_ENV)
    if override:
        path = os.path.abspath(override)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{LIB_ENV}={override}: no such file")
        return path
    tried = []
    for _, path in _candidates():
        if os.path.isfile(path):
            return path
        tried.append(path)
    raise FileNotFoundError(
        f"workspace shim {SHIM_NAME} not found (looked for {', '.join(tried)}); "
        "build it with `make -C preload` in a source checkout, reinstall the "
        f"package with `pip install .`, or point {LIB_ENV} at it"
    )


def workspace_env(workspace: str, base_env=None) -> dict:
    """A copy of `base_env` (default: os.environ) that runs under the shim.

    LD_PRELOAD gets the shim prepended (kept once, other entries preserved)
    and CMUX_WORKSPACE_INTERNAL is set to `workspace`. Raises InvalidWorkspace
    (a ValueError) for a name the shim would refuse to map, and ValueError for
    an empty one, rather than silently running the command unisolated.
    """
    if not workspace:
        raise ValueError("empty workspace name")
    workspace_ip(workspace)  # raises InvalidWorkspace
    env = dict(os.environ if base_env is None else base_env)
    lib = library_path()
    # ld.so accepts both ':' and whitespace as separators.
    existing = env.get("LD_PRELOAD", "").replace(":", " ").split()
    env["LD_PRELOAD"] = ":".join([lib] + [p for p in existing if p != lib])
    env[WORKSPACE_ENV] = workspace
    return env


def exit_code(returncode: int) -> int:
    """Shell convention: a child killed by signal N exits 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def run(workspace: str, argv) -> int:
    """Run `argv` in `workspace` under the shim; return its exit code.

    SIGINT and SIGTERM received meanwhile are forwarded to the child (when
    called from the main thread, where Python can install handlers). A child
    killed by a signal yields 128 + signal; a command that cannot be started
    yields 127 (not found) or 126 (not executable), as in a shell. An invalid
    workspace name yields 2 and a missing shim 1, each with a message on
    stderr: the command is never run unisolated.
    """
    argv = list(argv)
    if not argv:
        raise ValueError("no command given")
    try:
        env = workspace_env(workspace)
    except FileNotFoundError as exc:
        print(f"cmux-gevent: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # InvalidWorkspace, empty name
        print(f"cmux-gevent: {exc}", file=sys.stderr)
        return 2
    child = {"proc": None, "pending": []}

    def forward(signum, _frame):
        proc = child["proc"]
        if proc is None:  # arrived before the child existed: deliver it later
            child["pending"].append(signum)
        elif proc.returncode is None:
            try:
                proc.send_signal(signum)
            except ProcessLookupError:
                pass

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in FORWARDED_SIGNALS:
            previous[sig] = signal.signal(sig, forward)
    try:
        try:
            child["proc"] = proc = subprocess.Popen(argv, env=env)
        except FileNotFoundError:
            print(f"cmux-gevent: {argv[0]}: command not found", file=sys.stderr)
            return 127
        except PermissionError as exc:
            print(f"cmux-gevent: {argv[0]}: {exc.strerror}", file=sys.stderr)
            return 126
        for sig in child["pending"]:
            proc.send_signal(sig)
        return exit_code(proc.wait())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
