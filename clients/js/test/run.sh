#!/bin/sh
# Runs the JavaScript client's tests (clients/js/test/*.test.mjs) with node's test runner.
# Builds nothing and starts nothing itself: each test file starts its own cluster from
# target/release/firetower (or $FIRETOWER_BIN), so build that first. Files run one at a
# time: dev.test.mjs needs `firetower dev`'s fixed ports, and a cluster per core is plenty
# on a small machine. Exits non-zero when a test fails.
set -eu
cd "$(dirname "$0")/../../.."
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 22 ]; then
  # Node 20 and 21 have a global WebSocket only behind this flag.
  set -- --experimental-websocket "$@"
fi
# The files, expanded by the shell: node 20 takes paths, node 22 globs; both take files.
exec node "$@" --test --test-concurrency=1 clients/js/test/*.test.mjs
