# What the end-to-end tests in headless Chromium share (sourced by clients/js/e2e/run.sh
# and tests/dashboard/run.sh; not run on its own). It defines two functions:
#
#   chromium_test_setup DIR
#     Installs what is missing: Debian's `chromium` (apt-get; set CHROMIUM to use another
#     binary, which must then exist) and DIR's node_modules (npm ci from its
#     package-lock.json; puppeteer-core downloads no browser). Needs node and npm. Leaves
#     the shell in DIR. Exits 1 when something cannot be had.
#
#   chromium_test_run TEST [NODE_ARGS...]
#     Runs `node --test-reporter=spec NODE_ARGS TEST` in its own process group (job
#     control), so that whatever happens to the calling script the test's processes go with
#     it: node kills what the test started (a cluster, dev, the dashboard) and Chromium
#     when it exits, and Chromium, driven over a pipe, exits when node is gone. On the way
#     out, on failure and on Ctrl-C or SIGTERM too, the group is sent SIGTERM and then,
#     after 5 s, SIGKILL. Exits with the test's status (130 when interrupted).
#
# Messages start with `run.sh:`, the name of the scripts that source it.

chromium_test_setup() {
  local dir="$1" sudo=""
  export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
  if [ ! -x "$CHROMIUM" ]; then
    if [ "$CHROMIUM" != /usr/bin/chromium ]; then
      echo "run.sh: CHROMIUM=$CHROMIUM is not an executable" >&2
      exit 1
    fi
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
  cd "$dir"
  if [ ! -d node_modules/puppeteer-core ]; then
    # puppeteer-core never downloads a browser; this one makes sure of it for any other.
    export PUPPETEER_SKIP_DOWNLOAD=1
    if [ -f package-lock.json ]; then
      npm ci --no-audit --no-fund
    else
      npm install --no-audit --no-fund
    fi
  fi
}

chromium_test_run() {
  local test="$1" major status=0
  shift
  local node_flags=()
  major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$major" -lt 22 ]; then
    # The tests use the global WebSocket: behind this flag in node 20 and 21.
    node_flags+=(--experimental-websocket)
  fi

  set -m
  node "${node_flags[@]}" --test-reporter=spec "$@" "$test" &
  chromium_test_pid=$!
  trap 'chromium_test_cleanup; exit 130' INT TERM
  trap chromium_test_cleanup EXIT
  wait "$chromium_test_pid" || status=$?
  exit "$status"
}

chromium_test_cleanup() {
  if kill -0 "$chromium_test_pid" 2>/dev/null; then
    kill -TERM -- "-$chromium_test_pid" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      kill -0 "$chromium_test_pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -KILL -- "-$chromium_test_pid" 2>/dev/null || true
  fi
}
