#!/usr/bin/env bash
# Run the benchmark with the fd limit raised (idle WebSockets need ~4 fds each
# across client, proxy and upstream). All arguments go to bench.py; see --help.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec python3 "$here/bench.py" "$@"
