"""Command line: the daemon and the workspace helpers (run, ip, preload-path).

The usage text is generated from `config.OPTIONS`, so --help always lists every
option with its environment variable and default. `main()` is the only place
that monkey-patches: importing cmux_gevent patches nothing.
"""

import logging
import os
import sys
import textwrap

from docopt import DocoptExit, docopt

from . import __version__
from .config import OPTIONS, Config, ConfigError

USAGE_HEAD = """\
cmux-gevent: one port in front of many workspaces' dev servers.

Routes each request by X-Cmux-Port-Internal / X-Cmux-Workspace-Internal, or by
Host: <workspace>-<port>.localhost; streams HTTP, tunnels WebSocket and CONNECT.

Usage:
  cmux-gevent [options] [--listen=ADDR]...
  cmux-gevent run WORKSPACE [--] CMD [ARGS...]
  cmux-gevent ip WORKSPACE
  cmux-gevent preload-path
  cmux-gevent -h | --help
  cmux-gevent --version

Commands:
  run WORKSPACE -- CMD   Run CMD with the workspace shim preloaded (binds and
                         connects on the workspace's own loopback IP).
  ip WORKSPACE           Print the workspace's loopback IP.
  preload-path           Print the path of the LD_PRELOAD shim.

Options:
  -h --help              Show this help.
  --version              Show the version.
"""


def usage() -> str:
    lines = [USAGE_HEAD.rstrip("\n")]
    for option in OPTIONS:
        flag = f"  {option.flag}={option.metavar}"
        shown = option.default if option.default else "none"
        text = f"{option.help} Env {option.env}; default {shown}."
        # No hyphen breaks: "3000-3999" and env names must stay whole to be copied.
        wrapped = textwrap.wrap(text, 50, break_on_hyphens=False, break_long_words=False)
        if len(flag) > 23:  # docopt needs two spaces between an option and its help
            lines.append(flag)
        else:
            lines.append(f"{flag:<25}{wrapped.pop(0)}")
        lines.extend(" " * 25 + more for more in wrapped)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    try:
        args = docopt(usage(), argv=argv, version=f"cmux-gevent {__version__}")
    except DocoptExit as exc:
        print(exc, file=sys.stderr)
        return 2
    if args["run"]:
        from .preload import run

        return run(args["WORKSPACE"], [args["CMD"], *args["ARGS"]])
    if args["ip"]:
        return _print_ip(args["WORKSPACE"])
    if args["preload-path"]:
        return _print_preload_path()
    return serve(args)


def _print_preload_path() -> int:
    from .preload import library_path

    try:
        print(library_path())
    except FileNotFoundError as exc:
        print(f"cmux-gevent: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_ip(name: str) -> int:
    from .workspace import InvalidWorkspace, workspace_ip

    try:
        print(workspace_ip(name))
    except InvalidWorkspace as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


def serve(args) -> int:
    """Run the daemon: patch, bind everything (or nothing), serve until a signal."""
    try:
        config = Config.from_sources(args, os.environ)
    except ConfigError as exc:
        print(f"cmux-gevent: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        stream=sys.stderr,
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    import gevent
    from gevent import monkey

    monkey.patch_all(ssl=False, subprocess=False)  # the daemon uses neither: 5 MiB less RSS
    # A spawn records its spawner's stack for debugging: 3 % of a short connection's CPU.
    gevent.config.track_greenlet_tree = False
    from .workers import serve_config

    return serve_config(config)


def entry() -> None:
    sys.exit(main())
