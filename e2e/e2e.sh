#!/usr/bin/env bash
# End-to-end check of an installed cmux-gevent: the real daemon, real servers in
# workspace directories under the LD_PRELOAD shim, real clients. No Docker needed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
	cat <<'EOF'
Usage: e2e/e2e.sh [-h|--help|--print-config]

Runs the installed `cmux-gevent` daemon against real dev servers living in
workspace directories (python3 http.server, PostgreSQL, Node, a WebSocket echo
server) under the workspace shim, and checks routing and isolation. Every
process it starts is stopped on exit, failure or Ctrl-C. Exits 1 at the first
failed check, 2 when a prerequisite is missing. --print-config prints the
settings it would use (after defaults) and exits.

Environment (defaults in brackets):
  CMUX          the daemon command                         [cmux-gevent]
  SHIM          the LD_PRELOAD shim            [$(cmux-gevent preload-path)]
  PYTHON        python3 with websocket-client installed    [python3]
  PORT          proxy port on 127.0.0.1; if the default is busy and PORT
                was not set, a free port is used instead   [8080]
  APP_PORT      port of the workspace http.servers         [3000]
  STRESS_N      stress: number of workspaces/servers       [32]
  STRESS_PORT   stress: the port they all listen on        [3200]
  STRESS_CONC   stress: parallel clients                   [16]
  STRESS_ROUNDS stress: requests per workspace once up     [4]
  PG_PORT       PostgreSQL port in both workspaces         [5432]
  PG_BIN        PostgreSQL binaries    [newest /usr/lib/postgresql/*/bin]
  WS_PORT       WebSocket echo servers' port               [3400]
  NODE_PORT     Node servers' port                         [3300]
  WS_BASE       workspaces are workspace-(WS_BASE+1), -(WS_BASE+2) and,
                for the stress, -(WS_BASE+100) onwards     [9000]
  UP_TIMEOUT    seconds a server gets to come up           [15]
  SKIP_PG=1     skip the PostgreSQL scenario
  SKIP_NODE=1   skip the Node scenario
  KEEP_WORK=1   keep the work directory (logs, data) afterwards
  NO_COLOR=1    plain output (colour is used only on a terminal anyway)
EOF
}

MODE=run
case "${1:-}" in
-h | --help)
	usage
	exit 0
	;;
--print-config) MODE=print-config ;;
"") ;;
*)
	usage >&2
	exit 2
	;;
esac

CMUX=${CMUX:-cmux-gevent}
PYTHON=${PYTHON:-python3}
PORT_GIVEN=${PORT:+yes}
PORT=${PORT:-8080}
APP_PORT=${APP_PORT:-3000}
STRESS_N=${STRESS_N:-32}
STRESS_PORT=${STRESS_PORT:-3200}
STRESS_CONC=${STRESS_CONC:-16}
STRESS_ROUNDS=${STRESS_ROUNDS:-4}
PG_PORT=${PG_PORT:-5432}
WS_PORT=${WS_PORT:-3400}
NODE_PORT=${NODE_PORT:-3300}
WS_BASE=${WS_BASE:-9000}
UP_TIMEOUT=${UP_TIMEOUT:-15}
SKIP_PG=${SKIP_PG:-0}
SKIP_NODE=${SKIP_NODE:-0}
KEEP_WORK=${KEEP_WORK:-0}
HELPERS="$HERE/helpers.py"
A="workspace-$((WS_BASE + 1))"
B="workspace-$((WS_BASE + 2))"
STRESS_BASE=$((WS_BASE + 100))

# Our own clients and the daemon run outside any workspace, whatever shell
# (maybe a workspace's own, shim preloaded) started us; and direct, not via a proxy.
unset LD_PRELOAD CMUX_WORKSPACE_INTERNAL http_proxy https_proxy HTTP_PROXY HTTPS_PROXY \
	all_proxy ALL_PROXY no_proxy NO_PROXY

if [[ -t 1 && -z ${NO_COLOR:-} ]]; then
	BOLD=$'\e[1m' GREEN=$'\e[32m' RED=$'\e[31m' BLUE=$'\e[34m' RESET=$'\e[0m'
else
	BOLD='' GREEN='' RED='' BLUE='' RESET=''
fi

STEP=0
PASSED=0
PIDS=()      # every process we started, stopped with SIGTERM
PG_PIDS=()   # postmasters, stopped with SIGINT (fast shutdown)
STEP_LOGS=() # logs of the processes the current step started, shown if it fails
WORK=''

step() {
	STEP=$((STEP + 1))
	STEP_LOGS=()
	printf '\n%s%s%d. %s%s\n' "$BOLD" "$BLUE" "$STEP" "$*" "$RESET"
}

ok() {
	PASSED=$((PASSED + 1))
	printf '  %sok%s %s\n' "$GREEN" "$RESET" "$*"
}

fail() {
	printf '%sFAIL%s (step %d): %s\n' "$RED" "$RESET" "$STEP" "$*" >&2
	exit 1
}

missing() {
	printf '%sMISSING%s: %s\n' "$RED" "$RESET" "$*" >&2
	exit 2
}

stop_all() {
	local pid deadline
	for pid in "${PG_PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	deadline=$((SECONDS + 10))
	for pid in "${PG_PIDS[@]}" "${PIDS[@]}"; do
		while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
		if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
	done
	wait 2>/dev/null || true
}

cleanup() {
	local status=$? log
	trap - EXIT INT TERM
	stop_all
	if ((status != 0)) && [[ -n $WORK ]]; then
		for log in "$WORK/logs/proxy.log" "${STEP_LOGS[@]:0:6}"; do
			[[ -s $log ]] || continue
			printf '%s--- last lines of %s%s\n' "$BOLD" "${log##*/}" "$RESET" >&2
			tail -n 8 "$log" >&2
		done
		[[ $KEEP_WORK == 1 ]] || echo "(KEEP_WORK=1 keeps every log)" >&2
	fi
	if [[ -n $WORK && $KEEP_WORK != 1 ]]; then
		rm -rf "$WORK"
	elif [[ -n $WORK ]]; then
		echo "work directory kept: $WORK"
	fi
	printf '\ne2e: %d passed, %d failed (%ds)\n' "$PASSED" "$((status != 0))" "$SECONDS"
	exit "$status"
}

# -- processes ------------------------------------------------------------------------

# spawn NAME CMD...: start CMD (a program, not a function, so that the PID we
# keep is the server's own) in the background, logging to logs/NAME.log.
spawn() {
	local name=$1
	shift
	"$@" >"$WORK/logs/$name.log" 2>&1 &
	PIDS+=("$!")
	STEP_LOGS+=("$WORK/logs/$name.log")
}

# in_ws WS CMD...: run CMD inside workspace WS the way a developer's shell would:
# its directory as CWD, the shim preloaded, no CMUX_WORKSPACE_INTERNAL.
in_ws() { env -C "$WORK/$1" LD_PRELOAD="$SHIM" CMUX_WORKSPACE_ROOT="$WORK" "${@:2}"; }

# spawn_in WS NAME CMD...: spawn CMD inside workspace WS.
spawn_in() {
	spawn "$2" env -C "$WORK/$1" LD_PRELOAD="$SHIM" CMUX_WORKSPACE_ROOT="$WORK" "${@:3}"
}

# http_server WS PORT: `python3 -m http.server PORT --bind 127.0.0.1` in WS, serving ok-WS.
http_server() {
	mkdir -p "$WORK/$1"
	printf 'ok-%s\n' "$1" >"$WORK/$1/index.html"
	spawn_in "$1" "http-$1-$2" "$PYTHON" -m http.server "$2" --bind 127.0.0.1
}

# wait_for DESC PID CMD...: poll CMD until it succeeds; fail if PID dies or time runs out.
wait_for() {
	local desc=$1 pid=$2 deadline=$((SECONDS + UP_TIMEOUT))
	shift 2
	until "$@" >/dev/null 2>&1; do
		kill -0 "$pid" 2>/dev/null || fail "$desc: the process exited"
		((SECONDS < deadline)) || fail "$desc: not up after ${UP_TIMEOUT}s"
		sleep 0.1
	done
}

# elapsed START: seconds since START (an $EPOCHREALTIME value), e.g. "1.25s".
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2fs", b - a }'; }

port_free() { "$PYTHON" "$HELPERS" port-free "$1" "$2" 2>/dev/null; }

ws_ip() { "$CMUX" ip "$1"; }

# -- HTTP checks ----------------------------------------------------------------------

# get [--in WS] CURL-ARGS...: "<status> <body>" of a GET; status 000 if nothing answered.
get() {
	local run=() out
	if [[ $1 == --in ]]; then
		run=(in_ws "$2")
		shift 2
	fi
	out=$("${run[@]}" curl -sS -m 5 -w '\n%{http_code}' "$@" 2>/dev/null) || true
	printf '%s %s' "${out##*$'\n'}" "$(printf '%s' "${out%$'\n'*}" | tr -d '\r\n')"
}

# expect WANT DESC [--in WS] CURL-ARGS...: WANT is "<status>" or "<status> <body>".
expect() {
	local want=$1 desc=$2 got
	shift 2
	got=$(get "$@")
	if [[ $want == *' '* ]]; then
		[[ $got == "$want" ]] || fail "$desc: got '$got', want '$want'"
	else
		[[ ${got%% *} == "$want" ]] || fail "$desc: got '$got', want status $want"
	fi
	ok "$desc -> $got"
}

# expect_headers WANT WS PORT: through the proxy, routed by the X-Cmux headers.
expect_headers() {
	expect "$1" "headers $2:$3" -H "X-Cmux-Port-Internal: $3" \
		-H "X-Cmux-Workspace-Internal: $2" "http://127.0.0.1:$PORT/"
}

# expect_host WANT WS PORT: through the proxy, routed by Host: WS-PORT.localhost.
expect_host() {
	expect "$1" "Host: $2-$3.localhost" -H "Host: $2-$3.localhost" "http://127.0.0.1:$PORT/"
}

expect_routes() {
	expect_headers "$@"
	expect_host "$@"
}

# -- prerequisites and the daemon -----------------------------------------------------

# resolve_paths: SHIM and PG_BIN, unless given.
resolve_paths() {
	if [[ -z ${SHIM:-} ]]; then
		SHIM=$("$CMUX" preload-path) || missing "no shim: \`$CMUX preload-path\` failed"
	fi
	if [[ -z ${PG_BIN:-} ]]; then
		PG_BIN=$(find /usr/lib/postgresql -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -n 1)
	fi
}

print_config() {
	resolve_paths
	local name
	for name in CMUX SHIM PYTHON PORT APP_PORT STRESS_N STRESS_PORT STRESS_CONC STRESS_ROUNDS \
		PG_PORT PG_BIN WS_PORT NODE_PORT WS_BASE UP_TIMEOUT SKIP_PG SKIP_NODE KEEP_WORK; do
		printf '%s=%s\n' "$name" "${!name}"
	done
}

preflight() {
	local cmd
	for cmd in "$CMUX" "$PYTHON" curl; do
		command -v "$cmd" >/dev/null || missing "$cmd not found on PATH"
	done
	resolve_paths
	[[ -f $SHIM ]] || missing "shim $SHIM does not exist"
	"$PYTHON" -c 'import websocket' 2>/dev/null ||
		missing "$PYTHON lacks websocket-client (pip install websocket-client)"
	if [[ $SKIP_NODE != 1 ]]; then
		command -v node >/dev/null || missing "node not found (install nodejs, or SKIP_NODE=1)"
	fi
	if [[ $SKIP_PG != 1 ]]; then
		[[ -x ${PG_BIN:-}/postgres && -x $PG_BIN/initdb ]] ||
			missing "PostgreSQL not found (install postgresql, set PG_BIN, or SKIP_PG=1)"
		command -v psql >/dev/null || missing "psql not found (install postgresql-client)"
		if ((EUID == 0)); then
			id postgres >/dev/null 2>&1 || missing "running as root but there is no postgres user"
		fi
	fi
	if ! port_free 127.0.0.1 "$PORT"; then
		[[ -z $PORT_GIVEN ]] || missing "PORT=$PORT is in use on 127.0.0.1"
		PORT=$("$PYTHON" "$HELPERS" free-port)
		echo "port 8080 is busy: the proxy uses $PORT"
	fi
}

make_work() {
	# Physical path: the shim compares it with the CWD, which has no symlinks.
	WORK=$(cd "$(mktemp -d "${TMPDIR:-/tmp}/cmux-e2e.XXXXXX")" && pwd -P)
	chmod 755 "$WORK" # the postgres user must reach its data directory
	mkdir -p "$WORK/logs" "$WORK/$A" "$WORK/$B"
	cd "$WORK"
}

start_proxy() {
	spawn proxy "$CMUX" --listen "127.0.0.1:$PORT"
	PROXY_PID=$!
	wait_for "proxy on 127.0.0.1:$PORT" "$PROXY_PID" curl -s -o /dev/null "http://127.0.0.1:$PORT/"
}

# -- scenarios ------------------------------------------------------------------------

scenario_proxy_up() {
	step "The proxy is up: a request without routing headers gets 400"
	expect 400 "GET / without headers" "http://127.0.0.1:$PORT/"
	local body
	body=$(curl -sS -m 5 "http://127.0.0.1:$PORT/")
	[[ $body == *"missing required header: X-Cmux-Port-Internal"* ]] ||
		fail "400 body: got '$body'"
	ok "400 says: $body"
}

scenario_isolation() {
	step "Workspaces $A and $B: a server on 127.0.0.1:$APP_PORT in $A only"
	local ip_a ip_b ip
	ip_a=$(ws_ip "$A")
	ip_b=$(ws_ip "$B")
	for ip in "$ip_a" "$ip_b"; do
		port_free "$ip" "$APP_PORT" ||
			missing "port $APP_PORT is taken on $ip (a server on 0.0.0.0:$APP_PORT?): set APP_PORT"
	done
	http_server "$A" "$APP_PORT"
	wait_for "http.server in $A" "$!" curl -sf "http://$ip_a:$APP_PORT/"
	ok "$A's server listens on $ip_a:$APP_PORT, the workspace's own address"
	expect "200 ok-$A" "inside $A: 127.0.0.1:$APP_PORT" --in "$A" "http://127.0.0.1:$APP_PORT/"
	expect 000 "inside $B: 127.0.0.1:$APP_PORT does not reach $A" \
		--in "$B" "http://127.0.0.1:$APP_PORT/"

	step "Through the proxy with headers"
	expect_headers "200 ok-$A" "$A" "$APP_PORT"
	expect_headers 502 "$B" "$APP_PORT"

	step "Through the proxy with Host: <workspace>-<port>.localhost"
	expect_host "200 ok-$A" "$A" "$APP_PORT"
	expect_host 502 "$B" "$APP_PORT"

	step "$B starts its own server on port $APP_PORT"
	http_server "$B" "$APP_PORT"
	wait_for "http.server in $B" "$!" curl -sf "http://$ip_b:$APP_PORT/"
	expect_routes "200 ok-$B" "$B" "$APP_PORT"
	expect_routes "200 ok-$A" "$A" "$APP_PORT"
	expect "200 ok-$B" "inside $B: 127.0.0.1:$APP_PORT" --in "$B" "http://127.0.0.1:$APP_PORT/"
}

scenario_same_port() {
	step "A second server on port $APP_PORT in $A fails"
	local log="$WORK/logs/second-server.log"
	if in_ws "$A" timeout 10 "$PYTHON" -m http.server "$APP_PORT" --bind 127.0.0.1 >"$log" 2>&1; then
		fail "a second server in $A started on port $APP_PORT"
	fi
	grep -qi 'address already in use' "$log" || fail "no 'address already in use' in $log"
	ok "$(grep -i 'address already in use' "$log" | tail -n 1)"
	rm "$log" # an expected error: not worth showing if a later step fails
}

scenario_stress() {
	step "Stress: $STRESS_N servers on port $STRESS_PORT in distinct workspaces"
	local i started=$EPOCHREALTIME figures
	for ((i = 0; i < STRESS_N; i++)); do
		http_server "workspace-$((STRESS_BASE + i))" "$STRESS_PORT"
	done
	ok "$STRESS_N servers launched in $(elapsed "$started")"
	figures=$("$PYTHON" "$HELPERS" stress --proxy "127.0.0.1:$PORT" --port "$STRESS_PORT" \
		--base "$STRESS_BASE" --count "$STRESS_N" --conc "$STRESS_CONC" \
		--rounds "$STRESS_ROUNDS" --deadline "$((UP_TIMEOUT * 3))") ||
		fail "stress: some workspace was not up or answered for another (see above)"
	ok "$figures; $(elapsed "$started") from the first launch"
	for i in 0 $((STRESS_N / 2)) $((STRESS_N - 1)); do
		expect_host "200 ok-workspace-$((STRESS_BASE + i))" "workspace-$((STRESS_BASE + i))" "$STRESS_PORT"
	done
}

# pg_as: the prefix that runs a command as the postgres user when we are root
# (postgres refuses to run as root); empty otherwise.
pg_as() {
	PG_AS=()
	if ((EUID == 0)); then PG_AS=(runuser -u postgres --); fi
}

pg_start() {
	local ws=$1 data="$WORK/$1/pgdata" sock="$WORK/pgsock-$1" pid
	mkdir -p "$data" "$sock"
	((EUID != 0)) || chown postgres: "$data" "$sock"
	"${PG_AS[@]}" env LD_PRELOAD="$PG_SHIM" CMUX_WORKSPACE_INTERNAL="$ws" \
		"$PG_BIN/initdb" -D "$data" -U postgres --auth=trust --no-sync \
		>"$WORK/logs/initdb-$ws.log" 2>&1 || fail "initdb in $ws failed"
	echo "host all all 127.0.0.0/8 trust" >>"$data/pg_hba.conf"
	spawn "postgres-$ws" "${PG_AS[@]}" env LD_PRELOAD="$PG_SHIM" CMUX_WORKSPACE_INTERNAL="$ws" \
		"$PG_BIN/postgres" -D "$data" -p "$PG_PORT" -k "$sock" -c listen_addresses=127.0.0.1 \
		-c fsync=off -c max_connections=20 -c shared_buffers=16MB
	pid=$!
	wait_for "postgres in $ws" "$pid" test -s "$data/postmaster.pid"
	PG_PIDS+=("$(head -n 1 "$data/postmaster.pid")")
	wait_for "postgres in $ws" "$pid" sql_in "$ws" 'select 1'
}

# sql_in WS SQL: psql -h 127.0.0.1 from inside WS; prints the unaligned result.
sql_in() {
	in_ws "$1" psql -X -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres \
		-d "dbname=postgres sslmode=disable" -c "$2"
}

scenario_postgres() {
	step "PostgreSQL: a cluster on port $PG_PORT in $A and in $B"
	if [[ $SKIP_PG == 1 ]]; then
		echo "  skipped (SKIP_PG=1)"
		return
	fi
	local ws got port ready
	for ws in "$A" "$B"; do
		port_free "$(ws_ip "$ws")" "$PG_PORT" ||
			missing "port $PG_PORT is taken on $(ws_ip "$ws") (a server on 0.0.0.0:$PG_PORT?): set PG_PORT"
	done
	pg_as
	PG_SHIM=$SHIM
	if ((EUID == 0)) && ! runuser -u postgres -- test -r "$SHIM"; then
		PG_SHIM="$WORK/libworkspace_net.so" # e.g. under /root, which postgres cannot enter
		install -m 644 "$SHIM" "$PG_SHIM"
	fi
	pg_start "$A"
	pg_start "$B"
	ok "both clusters up, each on its workspace's address"
	for ws in "$A" "$B"; do
		sql_in "$ws" "create table t (v text); insert into t values ('row-$ws')" >/dev/null ||
			fail "create/insert in $ws"
	done
	for ws in "$A" "$B"; do
		got=$(sql_in "$ws" "select string_agg(v, ',') from t") || fail "select in $ws"
		[[ $got == "row-$ws" ]] || fail "inside $ws, psql -h 127.0.0.1 sees '$got', want 'row-$ws'"
		ok "inside $ws: psql -h 127.0.0.1 sees only row-$ws"
	done
	for ws in "$A" "$B"; do
		ready="$WORK/forward-$ws.port"
		spawn "forward-$ws" "$PYTHON" "$HELPERS" connect-forward --proxy "127.0.0.1:$PORT" \
			--workspace "$ws" --port "$PG_PORT" --ready "$ready"
		wait_for "CONNECT forwarder for $ws" "$!" test -s "$ready"
		port=$(<"$ready")
		got=$(psql -X -At -h 127.0.0.1 -p "$port" -U postgres -d "dbname=postgres sslmode=disable" \
			-c "select string_agg(v, ',') from t") || fail "psql through CONNECT to $ws"
		[[ $got == "row-$ws" ]] || fail "psql through CONNECT to $ws sees '$got', want 'row-$ws'"
		ok "psql through the proxy's CONNECT tunnel to $ws:$PG_PORT sees only row-$ws"
	done
}

scenario_websocket() {
	step "WebSocket sessions through the proxy"
	local ws
	for ws in "$A" "$B"; do
		spawn_in "$ws" "ws-echo-$ws" "$PYTHON" "$HELPERS" ws-echo "$WS_PORT" "$ws"
		wait_for "WebSocket server in $ws" "$!" curl -sf "http://$(ws_ip "$ws"):$WS_PORT/"
	done
	for ws in "$A" "$B"; do
		"$PYTHON" "$HELPERS" ws-client --proxy "127.0.0.1:$PORT" --workspace "$ws" \
			--port "$WS_PORT" --expect "$ws" || fail "WebSocket to $ws by headers"
		ok "WebSocket echo by headers reaches $ws"
		"$PYTHON" "$HELPERS" ws-client --proxy "127.0.0.1:$PORT" --workspace "$ws" \
			--port "$WS_PORT" --expect "$ws" --host-route || fail "WebSocket to $ws by Host"
		ok "WebSocket echo by Host: $ws-$WS_PORT.localhost reaches $ws"
	done
}

scenario_node() {
	step "Node servers with listen($NODE_PORT) (IPv6 wildcard) in $A and $B"
	if [[ $SKIP_NODE == 1 ]]; then
		echo "  skipped (SKIP_NODE=1)"
		return
	fi
	local ws script='const [port, name] = process.argv.slice(1);
require("http").createServer((req, res) => res.end("node-" + name)).listen(Number(port));'
	for ws in "$A" "$B"; do
		spawn_in "$ws" "node-$ws" node -e "$script" "$NODE_PORT" "$ws"
		wait_for "node in $ws" "$!" curl -sf "http://$(ws_ip "$ws"):$NODE_PORT/"
	done
	for ws in "$A" "$B"; do
		expect_routes "200 node-$ws" "$ws" "$NODE_PORT"
		expect "200 node-$ws" "inside $ws: [::1]:$NODE_PORT" --in "$ws" -g "http://[::1]:$NODE_PORT/"
	done
}

main() {
	if [[ $MODE == print-config ]]; then
		print_config
		return
	fi
	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	preflight
	make_work
	echo "cmux-gevent e2e: proxy 127.0.0.1:$PORT, shim $SHIM, work $WORK"
	start_proxy
	scenario_proxy_up
	scenario_isolation
	scenario_same_port
	scenario_stress
	scenario_postgres
	scenario_websocket
	scenario_node
	printf '\n%sall end-to-end checks passed%s\n' "$GREEN" "$RESET"
}

main
