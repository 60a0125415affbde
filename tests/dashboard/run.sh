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
# failure and on Ctrl-C or SIGTERM too. Extra arguments go to node. The setup and the
# run are clients/js/e2e/chromium-test.sh's, shared with the chat demo's test.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
source "$repo/clients/js/e2e/chromium-test.sh"

chromium_test_setup "$here"

if [ -z "${FIRETOWER_BIN:-}" ]; then
  (cd "$repo" && cargo build -p firetower)
  FIRETOWER_BIN="$(cd "$repo/${CARGO_TARGET_DIR:-target}" && pwd)/debug/firetower"
fi
export FIRETOWER_BIN
if [ ! -x "$FIRETOWER_BIN" ]; then
  echo "run.sh: no firetower binary at $FIRETOWER_BIN" >&2
  exit 1
fi

# node kills dev and the dashboard when it exits.
chromium_test_run dashboard.test.mjs "$@"
