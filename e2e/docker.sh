#!/usr/bin/env bash
# Builds the runtime image (Dockerfile) and runs e2e/e2e.sh inside a container,
# when a Docker engine answers `docker info`; otherwise says why and exits 0.
# The e2e tunables (PORT, STRESS_N, ...; see e2e/e2e.sh --help) are passed through.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DOCKER=${DOCKER:-docker}
IMAGE=${IMAGE:-cmux-gevent:e2e}
# Where the Dockerfile's runtime stage copies e2e/.
E2E_IN_IMAGE=/opt/cmux-gevent/e2e/e2e.sh
TUNABLES=(PORT APP_PORT STRESS_N STRESS_PORT STRESS_CONC STRESS_ROUNDS PG_PORT WS_PORT
	NODE_PORT WS_BASE UP_TIMEOUT SKIP_PG SKIP_NODE KEEP_WORK NO_COLOR)

skip() {
	echo "e2e/docker.sh: skipping the container e2e run: $*"
	exit 0
}

command -v "$DOCKER" >/dev/null || skip "no '$DOCKER' command on PATH"
if ! why=$(timeout 30 "$DOCKER" info 2>&1 >/dev/null); then
	skip "'$DOCKER info' failed: ${why##*$'\n'}"
fi

"$DOCKER" build --target runtime --tag "$IMAGE" "$ROOT"

run_args=(--rm --init)
[[ -t 0 && -t 1 ]] && run_args+=(--tty --interactive)
for name in "${TUNABLES[@]}"; do
	[[ -z ${!name+set} ]] || run_args+=(--env "$name")
done
exec "$DOCKER" run "${run_args[@]}" --entrypoint bash "$IMAGE" "$E2E_IN_IMAGE"
