#!/usr/bin/env bash
# CI test of the Python publisher (clients/python/publish.py) against a real `firetower dev`
# cluster, with JavaScript subscribers (clients/js/firetower.js) on both edges:
#
#   1. a venv (clients/python/.venv, or $FIRETOWER_PY_VENV) with requirements.txt;
#   2. the stubs generated from proto/proto/*.proto into a temp dir (generate.py);
#   3. `firetower dev --data-dir <tmp>` from $FIRETOWER_BIN (default target/release/firetower),
#      its `client token:`, `api key file:` and `ca file:` lines read once it prints `ready`;
#   4. subscriber.mjs: one FiretowerClient per edge (9999 and 9998), subscribed to a fresh topic;
#   5. publish.py: a refused publish (wrong API key), a refused one (not JSON), then one
#      Publish (distributor 1), one PublishBatch of 2 (distributor 2), one PublishStream of 2;
#   6. checks that each subscriber got exactly those 5 messages, in order, with the data that
#      was published and the (epoch, seq) that publish.py printed, and nothing else.
#
# Needs python3 (3.11), node (20 or later) and the firetower binary; pip downloads from PyPI.
# dev listens on fixed ports (TCP 7101-7103, 6667, 6677, 9998, 9999; UDP 6666, 6676): they
# must be free. Every process started here is killed on the way out. Exits non-zero on any
# failure; prints `PASS` on success.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
py_dir=$(dirname "$here")
repo=$(cd "$py_dir/../.." && pwd)
bin=${FIRETOWER_BIN:-$repo/target/release/firetower}
venv=${FIRETOWER_PY_VENV:-$py_dir/.venv}
start=$SECONDS

say() { printf '[%3ds] %s\n' "$((SECONDS - start))" "$*"; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/firetower-py-test-XXXXXX")
pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "$status" -ne 0 ]; then
    for f in dev.out dev.err sub.out sub.err; do
      if [ -s "$tmp/$f" ]; then
        echo "--- $f (last 20 lines)" >&2
        tail -n 20 "$tmp/$f" >&2
      fi
    done
  fi
  rm -rf "$tmp"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ -x "$bin" ] || die "no firetower binary at $bin (cargo build --release -p firetower, or set FIRETOWER_BIN)"
command -v node >/dev/null || die "node is not installed"
command -v python3 >/dev/null || die "python3 is not installed"

# dev's fixed ports must be free.
busy=$(python3 - <<'EOF'
import socket
busy = []
for kind, ports in ((socket.SOCK_STREAM, (7101, 7102, 7103, 6667, 6677, 9998, 9999)),
                    (socket.SOCK_DGRAM, (6666, 6676))):
    for port in ports:
        s = socket.socket(socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as dev's listeners do
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            busy.append(f"{port}/{'tcp' if kind == socket.SOCK_STREAM else 'udp'}")
        finally:
            s.close()
print(" ".join(busy))
EOF
)
[ -z "$busy" ] || die "firetower dev needs its fixed ports, and these are in use: $busy (is another dev running? ss -ltnup)"

# 1. The venv and the pinned requirements.
if [ ! -x "$venv/bin/python" ]; then
  say "creating the venv $venv"
  python3 -m venv "$venv"
fi
say "pip install -r requirements.txt"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$py_dir/requirements.txt"
py="$venv/bin/python"

# 2. The stubs, from the repository's .proto files, into the temp dir.
"$py" "$py_dir/generate.py" --out "$tmp/stubs"
[ -f "$tmp/stubs/distributor_pb2_grpc.py" ] || die "generate.py made no distributor stubs"

# 3. firetower dev.
say "starting $bin dev"
RUST_LOG=warn "$bin" dev --data-dir "$tmp/data" >"$tmp/dev.out" 2>"$tmp/dev.err" &
dev_pid=$!
pids+=("$dev_pid")
for _ in $(seq 1 900); do
  grep -qx 'ready' "$tmp/dev.out" && break
  kill -0 "$dev_pid" 2>/dev/null || die "firetower dev exited before printing ready"
  sleep 0.1
done
grep -qx 'ready' "$tmp/dev.out" || die "firetower dev did not print ready within 90 s"
field() { sed -n "s/^$1: //p" "$tmp/dev.out" | head -n 1; }
token=$(field 'client token')
key_file=$(field 'api key file')
ca_file=$(field 'ca file')
[ -n "$token" ] && [ -f "$key_file" ] && [ -f "$ca_file" ] \
  || die "dev did not print a client token, an api key file and a ca file"
say "dev is ready (api key file: $key_file, ca file: $ca_file)"

# 4. JavaScript subscribers on both edges.
topic="py/test-$$-$RANDOM"
count=5
node_flags=()
if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 22 ]; then
  node_flags+=(--experimental-websocket)   # Node 20 and 21: the global WebSocket
fi
node "${node_flags[@]}" "$here/subscriber.mjs" --url ws://127.0.0.1:9999/ws --url ws://127.0.0.1:9998/ws \
  --token "$token" --topic "$topic" --count "$count" >"$tmp/sub.out" 2>"$tmp/sub.err" &
sub_pid=$!
pids+=("$sub_pid")
for _ in $(seq 1 200); do
  grep -qx 'subscribed' "$tmp/sub.out" && break
  kill -0 "$sub_pid" 2>/dev/null || die "the subscriber exited before subscribing: $(cat "$tmp/sub.err")"
  sleep 0.1
done
grep -qx 'subscribed' "$tmp/sub.out" || die "the subscriber did not subscribe within 20 s"
say "subscribed to $topic on both edges"

# 5. Publish.
publish() {
  "$py" "$py_dir/publish.py" --stubs-dir "$tmp/stubs" --ca-file "$ca_file" "$@"
}
expected="$tmp/expected.jsonl"
: >"$expected"
expect() { # data epoch seq
  python3 -c 'import json, sys; print(json.dumps({"topic": sys.argv[1], "data": json.loads(sys.argv[2]), "epoch": int(sys.argv[3]), "seq": int(sys.argv[4])}))' \
    "$topic" "$1" "$2" "$3" >>"$expected"
}
position() { # "epoch=E seq=S" -> "E S"
  sed -n 's/^\(line=[0-9]* \)\{0,1\}epoch=\([0-9]*\) seq=\([0-9]*\)$/\2 \3/p'
}

# Refused: a key the cluster does not know (exit 1, UNAUTHENTICATED), data that is not JSON
# (exit 64, INVALID_ARGUMENT). Neither may reach the subscribers.
# expect_refused WHAT EXIT PATTERN ARGS...: publish.py with ARGS must exit EXIT with an error
# line matching PATTERN.
expect_refused() {
  what=$1 want_rc=$2 pattern=$3
  shift 3
  set +e
  publish "$@" >"$tmp/p.out" 2>"$tmp/p.err"
  rc=$?
  set -e
  [ "$rc" -eq "$want_rc" ] && grep -q "$pattern" "$tmp/p.err" \
    || die "$what: exit $rc, $(cat "$tmp/p.err") (want exit $want_rc, $pattern)"
  say "$what refused: $(cat "$tmp/p.err")"
}
echo "not-a-key" >"$tmp/wrong.key"
expect_refused "a wrong key" 1 '^error: UNAUTHENTICATED: ' \
  --api-key-file "$tmp/wrong.key" --topic "$topic" --data '{"refused":1}'
expect_refused "bad JSON" 64 '^error: INVALID_ARGUMENT: data: ' \
  --api-key-file "$key_file" --topic "$topic" --data 'not json'

# One Publish through distributor 1.
one='{"from":"python","text":"h\u00e9llo \u2713 ✓","n":1,"nested":{"a":[1,2.5,null,true,"x"]}}'
out=$(publish --distributor 127.0.0.1:6667 --api-key-file "$key_file" --topic "$topic" --data "$one") \
  || die "publish.py (Publish) failed"
say "publish.py: $out"
read -r e s <<<"$(echo "$out" | position)"
[ -n "${s:-}" ] || die "publish.py printed no position: $out"
expect "$one" "$e" "$s"

# One PublishBatch of two through distributor 2 (which may forward to the owner).
out=$(publish --distributor 127.0.0.1:6677 --api-key-file "$key_file" --topic "$topic" \
  --data '"two"' --data '[3,{"x":"three"}]') || die "publish.py (PublishBatch) failed"
say "publish.py (batch): $(echo "$out" | tr '\n' ' ')"
[ "$(echo "$out" | position | wc -l)" -eq 2 ] || die "the batch printed no 2 positions: $out"
i=0
for d in '"two"' '[3,{"x":"three"}]'; do
  i=$((i + 1))
  read -r e s <<<"$(echo "$out" | position | sed -n "${i}p")"
  expect "$d" "$e" "$s"
done

# One PublishStream of two lines (answers may come in any order: by line number).
out=$(printf '%s\t%s\n%s\t%s\n' "$topic" '{"n":4}' "$topic" '5' \
  | publish --stream --distributor 127.0.0.1:6667 --api-key-file "$key_file" 2>"$tmp/stream.err") \
  || die "publish.py (PublishStream) failed: $out $(cat "$tmp/stream.err")"
say "publish.py (stream): $(echo "$out" | tr '\n' ' ')($(cat "$tmp/stream.err"))"
i=0
for d in '{"n":4}' '5'; do
  i=$((i + 1))
  read -r e s <<<"$(echo "$out" | grep "^line=$i " | position)"
  [ -n "${s:-}" ] || die "the stream printed no position for line $i: $out"
  expect "$d" "$e" "$s"
done

# 6. What the subscribers got.
set +e
wait "$sub_pid"
rc=$?
set -e
[ "$rc" -eq 0 ] || die "the subscriber exited $rc: $(cat "$tmp/sub.err")"
python3 - "$expected" "$tmp/sub.out" <<'EOF' || die "the subscribers did not get exactly what was published"
import json, sys
expected = [json.loads(l) for l in open(sys.argv[1])]
got = {}
for line in open(sys.argv[2]):
    line = line.strip()
    if line and line != "subscribed":
        m = json.loads(line)
        got.setdefault(m.pop("edge"), []).append(m)
edges = ["ws://127.0.0.1:9999/ws", "ws://127.0.0.1:9998/ws"]
ok = len(expected) == 5 and sorted(got) == sorted(edges)
for edge in edges:
    if got.get(edge) != expected:
        ok = False
        print(f"{edge}: got      {json.dumps(got.get(edge), ensure_ascii=False)}", file=sys.stderr)
        print(f"{edge}: expected {json.dumps(expected, ensure_ascii=False)}", file=sys.stderr)
seqs = [(m["epoch"], m["seq"]) for m in expected]
if seqs != sorted(set(seqs)):
    ok = False
    print(f"positions not increasing: {seqs}", file=sys.stderr)
if ok:
    for m in expected:
        print(f"  both edges got epoch={m['epoch']} seq={m['seq']} {json.dumps(m['data'], ensure_ascii=False)}")
sys.exit(0 if ok else 1)
EOF

# Not a pass condition: whether grpcio's own TLS can talk to dev's Ed25519 certificates yet
# (tls_bridge.py says why it cannot). Another topic, so that the count above is untouched.
set +e
publish --tls grpc --api-key-file "$key_file" --topic "$topic-native" --data '1' --timeout 5 >"$tmp/p.out" 2>"$tmp/p.err"
rc=$?
set -e
if [ "$rc" -eq 0 ]; then
  say "NOTE: --tls grpc (grpcio's own TLS) works against this cluster now: $(cat "$tmp/p.out")"
elif grep -q 'HANDSHAKE_FAILURE' "$tmp/p.err"; then
  say "NOTE: --tls grpc (grpcio's own TLS) is still refused by dev's Ed25519 certificates; the test used the ssl bridge"
else
  die "--tls grpc failed otherwise than known: $(cat "$tmp/p.err")"
fi

say "PASS: the Python publisher's $count messages (Publish, PublishBatch, PublishStream) reached JavaScript clients on both edges, exactly and in order"
