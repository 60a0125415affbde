#!/usr/bin/env bash
# End-to-end test of `firetower dashboard` in headless Chromium (dashboard.test.mjs)
# against `firetower dev`, which it starts (dev's fixed ports must be free: 9999, 9998,
# 6667, 6677, 7101-7103). Saves a screenshot to docs/dashboard.png.
#
# The binary: $FIRETOWER_BIN, or else `cargo build -p firetower` is run and
# target/debug/firetower used (so the page tested is the one in src/dashboard/).
# Installs what is missing: Debian's `chromium` (apt-get; set CHROMIUM to use another
# binary) and puppeteer-core (npm ci, from package-lock.json; it downloads no browser).
# Exits non-zero when any check fails; kills everything it started on the way out, on
# failure and on Ctrl-C or SIGTERM too. Extra arguments go to node.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
  if [ "$CHROMIUM" != /usr/bin/chromium ]; then
    echo "run.sh: CHROMIUM=$CHROMIUM is not an executable" >&2
    exit 1
  fi
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "run.sh: installing chromium with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install -y chromium; then
    $sudo apt-get update
    $sudo apt-get install -y chromium
  fi
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "run.sh: node and npm are needed (node >= 20)" >&2
  exit 1
fi
cd "$here"
if [ ! -d node_modules/puppeteer-core ]; then
  export PUPPETEER_SKIP_DOWNLOAD=1
  npm ci --no-audit --no-fund
fi

if [ -z "${FIRETOWER_BIN:-}" ]; then
  (cd "$repo" && cargo build -p firetower)
  FIRETOWER_BIN="$(cd "$repo/${CARGO_TARGET_DIR:-target}" && pwd)/debug/firetower"
fi
export FIRETOWER_BIN
if [ ! -x "$FIRETOWER_BIN" ]; then
  echo "run.sh: no firetower binary at $FIRETOWER_BIN" >&2
  exit 1
fi

node_flags=()
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 22 ]; then
  # The subscribers use the global WebSocket: behind this flag in node 20 and 21.
  node_flags+=(--experimental-websocket)
fi

# The test runs in its own process group (job control), so that whatever happens to this
# script its processes go with it: node kills dev, the dashboard and Chromium when it exits.
set -m
node "${node_flags[@]}" --test-reporter=spec "$@" dashboard.test.mjs &
pid=$!
cleanup() {
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
}
trap 'cleanup; exit 130' INT TERM
trap cleanup EXIT
status=0
wait "$pid" || status=$?
exit "$status"
