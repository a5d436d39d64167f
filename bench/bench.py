#!/usr/bin/env python3
"""cmux-gevent's benchmark: the proxy side by side with nginx and `direct`, in one run.

    python bench/bench.py                        # all systems and scenarios, 3 rounds
    python bench/bench.py --smoke                # tiny sizes, < 30 s (CI)
    python bench/bench.py --rounds 5 --size 1G --duration 10 --scenarios get,bulk
    python bench/bench.py --proxy-cmd 'cmux-gevent' --proxy-args '--log-level warning'

Systems: direct (no proxy), cmux (`python -m cmux_gevent` from this tree, or
--proxy-cmd), cmux-w2 (the same with --workers 2), nginx (if installed: a
header router, 1 worker). Each round starts every system, runs each scenario
against all of them in a rotating order (drift on a noisy box hits all alike),
then stops them. Prints Markdown tables (medians, spread, ratios to nginx and
direct) and writes every record to a JSON file. Loopback only.
"""

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nginx
import report
from procs import ProcessSet, interrupt_on_signals, raise_fd_limit
from scenarios import SCENARIOS, Context
from systems import Cmux, Direct, Nginx, Upstreams

ALL_SYSTEMS = ("direct", "cmux", "cmux-w2", "nginx")
SMOKE = {"rounds": 1, "size": 16 << 20, "duration": 1, "idle_conns": 50, "conns": 16}


def log(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    """'1G', '64M', '512k', '1048576' -> bytes (binary multiples)."""
    found = re.fullmatch(r"(\d+)([kKmMgG]?)i?[bB]?", text.strip())
    if not found:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1G, 64M, 4096)")
    return int(found.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[found.group(2).lower()]


def csv(choices):
    def parse(text: str):
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if item not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)}; got {text!r}")
        return items

    return parse


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--systems",
        type=csv(ALL_SYSTEMS),
        default=list(ALL_SYSTEMS),
        help="comma list (default: all)",
    )
    ap.add_argument(
        "--scenarios",
        type=csv(tuple(SCENARIOS)),
        default=list(SCENARIOS),
        help="comma list (default: all)",
    )
    ap.add_argument(
        "--rounds", type=int, default=3, help="rounds; medians are over these (default 3)"
    )
    ap.add_argument(
        "--size", type=parse_size, default=1 << 30, help="bulk/CONNECT download size (default 1G)"
    )
    ap.add_argument(
        "--duration", type=int, default=10, help="seconds of load per GET run (default 10)"
    )
    ap.add_argument(
        "--idle-conns", type=int, default=5000, help="idle WebSockets to hold (default 5000)"
    )
    ap.add_argument(
        "--conns", type=int, default=64, help="keep-alive connections for GET (default 64)"
    )
    ap.add_argument(
        "--threads", type=int, default=2, help="load generator threads/processes (default 2)"
    )
    ap.add_argument(
        "--proxy-cmd",
        default=f"{shlex.quote(sys.executable)} -m cmux_gevent",
        help="how to start cmux; '--listen 127.0.0.1:PORT' is appended (default: from this tree)",
    )
    ap.add_argument("--proxy-args", default="", help="extra arguments for both cmux systems")
    ap.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="GET load generator (auto: wrk if installed)",
    )
    ap.add_argument(
        "--origin",
        choices=("auto", "nginx", "python"),
        default="auto",
        help="HTTP origin (auto: nginx with sendfile if installed)",
    )
    ap.add_argument(
        "--json",
        type=Path,
        default=None,
        help="results file (default: a new file under the temp dir)",
    )
    ap.add_argument("--smoke", action="store_true", help=f"a < 30 s run for CI: {SMOKE}")
    args = ap.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    args.threads = max(1, min(args.threads, args.conns))
    if args.json is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        args.json = Path(tempfile.gettempdir()) / f"cmux-bench-{stamp}.json"
    return args


def find_tools(args, notes):
    """(wrk path or None, nginx path or None), with a note for each tool missing."""
    wrk = shutil.which("wrk") if args.loadgen != "python" else None
    if not wrk and args.loadgen != "python":
        notes.append(
            "wrk not found: GET load from the built-in Python generator (apt-get install wrk)"
        )
        if args.loadgen == "wrk":
            sys.exit("--loadgen wrk: wrk is not installed")
    nginx_bin = nginx.nginx_path()
    if not nginx_bin and ("nginx" in args.systems or args.origin == "nginx"):
        notes.append(
            "nginx not found: system nginx skipped, Python origin used"
            " (apt-get install nginx-light)"
        )
        if args.origin == "nginx":
            sys.exit("--origin nginx: nginx is not installed")
    return wrk, nginx_bin


def build_systems(args, procs, workdir, upstreams, nginx_bin, notes):
    cmd = shlex.split(args.proxy_cmd)
    extra = shlex.split(args.proxy_args)
    systems = []
    for name in args.systems:
        if name == "direct":
            systems.append(Direct(procs))
        elif name in ("cmux", "cmux-w2"):
            workers = ["--workers", "2"] if name == "cmux-w2" else []
            systems.append(Cmux(procs, name, cmd, [*workers, *extra]))
        elif name == "nginx" and nginx_bin:
            system = Nginx(procs, nginx_bin, workdir, upstreams.origin_port)
            if system.tunnel is None and "connect" in args.scenarios:
                notes.append(
                    "nginx has no stream module: its CONNECT cell stays empty"
                    " (apt-get install libnginx-mod-stream)"
                )
            systems.append(system)
    return systems


def run_rounds(args, ctx, systems, records, notes):
    for round_no in range(1, args.rounds + 1):
        log(f"round {round_no}/{args.rounds}: starting {', '.join(s.name for s in systems)}")
        live = []
        for system in systems:
            try:
                system.start()
                live.append(system)
            except RuntimeError as exc:
                tail = system.proc.log_tail() if system.proc else ""
                notes.append(
                    f"{system.name} did not start in round {round_no}: {exc} {tail}".strip()
                )
                system.stop()
        try:
            for index, scenario in enumerate(args.scenarios):
                shift = (round_no + index) % max(1, len(live))
                for system in live[shift:] + live[:shift]:
                    records.append(run_one(ctx, system, scenario, round_no))
        finally:
            for system in live:
                system.stop()


def run_one(ctx, system, scenario, round_no) -> dict:
    started = time.monotonic()
    try:
        if system.proc and not system.proc.alive():
            log(f"{system.name} died (see {system.proc.log_path}); restarting")
            system.restart()
        record = SCENARIOS[scenario](system, ctx)
    except Exception as exc:  # noqa: BLE001 -- one failed measurement must not lose the others
        record = {"error": f"{type(exc).__name__}: {exc}"}
    record.update(
        system=system.name,
        scenario=scenario,
        round=round_no,
        wall_s=round(time.monotonic() - started, 2),
    )
    shown = {k: round(v, 2) for k, v in record.items() if isinstance(v, float) and k != "wall_s"}
    outcome = record.get("error", "") or record.get("skipped", "")
    log(f"r{round_no} {scenario:8} {system.name:8} {shown} {outcome}")
    return record


def main(argv=None) -> int:
    args = parse_args(argv)
    interrupt_on_signals()
    fd_limit = raise_fd_limit()
    notes = []
    if fd_limit < 2 * args.idle_conns + 1000:  # the proxy holds two sockets per WebSocket
        notes.append(
            f"fd limit {fd_limit} may be too low for {args.idle_conns} idle WebSockets (ulimit -Hn)"
        )
    wrk, nginx_bin = find_tools(args, notes)
    workdir = Path(tempfile.mkdtemp(prefix="cmux-bench-"))
    workdir.chmod(0o755)  # nginx workers run as nobody when started by root
    procs = ProcessSet(workdir)
    records = []
    try:
        origin_nginx = nginx_bin if args.origin != "python" else None
        upstreams = Upstreams(procs, workdir, args.size, origin_nginx)
        systems = build_systems(args, procs, workdir, upstreams, nginx_bin, notes)
        ctx = Context(args, upstreams, procs, wrk)
        for note in notes:
            log("note: " + note)
        run_rounds(args, ctx, systems, records, notes)
    except KeyboardInterrupt:
        log("interrupted: stopping everything started")
        return 130
    except RuntimeError as exc:  # an upstream did not start: nothing to compare against
        log(f"error: {exc}")
        return 1
    finally:
        procs.stop_all()
        (workdir / "www" / "bulk").unlink(missing_ok=True)  # sparse, but --size can be huge
    names = [s.name for s in systems]
    write_json(args, upstreams, wrk, records, notes, names, procs.history)
    print(
        f"Origin: {upstreams.origin_kind}; GET load: {'wrk' if wrk else 'Python generator'}; ",
        end="",
    )
    print(f"{os.cpu_count()} CPUs; load average at the end {os.getloadavg()[0]:.1f}\n")
    print(report.markdown(records, names, args.scenarios, args.rounds))
    for note in notes:
        print(f"- note: {note}")
    print(f"\nRecords: {args.json}   Logs: {workdir}")
    return 0


def write_json(args, upstreams, wrk, records, notes, names, started) -> None:
    med = report.medians(records)
    data = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "argv": sys.argv,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "origin": upstreams.origin_kind,
        "generator": "wrk" if wrk else "python",
        "systems": names,
        "notes": notes,
        "medians": med,
        "ratios": {ref: report.ratios(med, ref) for ref in report.REFERENCES if ref in med},
        "records": records,
        "processes": started,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    sys.exit(main())
