#!/usr/bin/env bash
# End-to-end test of the chat demo in headless Chromium (chat.test.mjs) against a real
# cluster started from target/release/firetower (or $FIRETOWER_BIN): build that first.
#
# Installs what is missing: Debian's `chromium` (apt-get; set CHROMIUM to use another
# binary) and puppeteer-core (npm ci, from package-lock.json; it downloads no browser).
# Exits non-zero when the test fails; kills everything it started (the cluster's
# processes and Chromium) on the way out, on failure and on Ctrl-C or SIGTERM too.
# Extra arguments go to node (e.g. --test-reporter=tap). The setup and the run are
# chromium-test.sh's, shared with tests/dashboard/run.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
source "$here/chromium-test.sh"

chromium_test_setup "$here"

export FIRETOWER_BIN="${FIRETOWER_BIN:-$repo/target/release/firetower}"
if [ ! -x "$FIRETOWER_BIN" ]; then
  echo "run.sh: no firetower binary at $FIRETOWER_BIN (cargo build --release -p firetower, or set FIRETOWER_BIN)" >&2
  exit 1
fi

# cluster.mjs kills the cluster's processes when node exits.
chromium_test_run chat.test.mjs "$@"
