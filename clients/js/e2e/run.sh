#!/usr/bin/env bash
# End-to-end test of the chat demo in headless Chromium (chat.test.mjs) against a real
# cluster started from target/release/firetower (or $FIRETOWER_BIN): build that first.
#
# Installs what is missing: Debian's `chromium` (apt-get; set CHROMIUM to use another
# binary) and puppeteer-core (npm ci, from package-lock.json; it downloads no browser).
# Exits non-zero when the test fails; kills everything it started (the cluster's
# processes and Chromium) on the way out, on failure and on Ctrl-C or SIGTERM too.
# Extra arguments go to node (e.g. --test-reporter=tap).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"

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
  # puppeteer-core never downloads a browser; this one makes sure of it for any other.
  export PUPPETEER_SKIP_DOWNLOAD=1
  if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund
  else
    npm install --no-audit --no-fund
  fi
fi

export FIRETOWER_BIN="${FIRETOWER_BIN:-$repo/target/release/firetower}"
if [ ! -x "$FIRETOWER_BIN" ]; then
  echo "run.sh: no firetower binary at $FIRETOWER_BIN (cargo build --release -p firetower, or set FIRETOWER_BIN)" >&2
  exit 1
fi

node_flags=()
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 22 ]; then
  # cluster.mjs uses the global WebSocket: behind this flag in node 20 and 21.
  node_flags+=(--experimental-websocket)
fi

# The test runs in its own process group (job control), so that whatever happens to this
# script its processes go with it: node kills the cluster and Chromium when it exits
# (cluster.mjs, puppeteer), and Chromium, driven over a pipe, exits when node is gone.
set -m
node "${node_flags[@]}" --test-reporter=spec "$@" chat.test.mjs &
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
