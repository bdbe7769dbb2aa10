#!/usr/bin/env bash
# Runs the Python example against a live maestrod, as CI does: a virtualenv with
# grpcio and grpcio-tools (kept in /var/cache/maestro/pyclient), stubs generated
# from proto/, a daemon on a free loopback port with a fresh data dir, then
#   1. the example with the admin token: the demo loop must end SUCCEEDED;
#   2. the example with a wrong token: it must fail with UNAUTHENTICATED.
# MAESTROD=path picks the daemon binary (default: target/release/maestrod, built if missing).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
venv=${MAESTRO_PY_VENV:-/var/cache/maestro/pyclient}
if [ ! -x "$venv/bin/python" ]; then
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check 'grpcio>=1.60,<2' 'grpcio-tools>=1.60,<2'

work=$(mktemp -d)
daemon_pid=
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

export MAESTRO_PY_GEN="$work/gen"
mkdir -p "$MAESTRO_PY_GEN"
"$venv/bin/python" -m grpc_tools.protoc -I "$repo/proto" --python_out="$MAESTRO_PY_GEN" \
  --grpc_python_out="$MAESTRO_PY_GEN" "$repo"/proto/maestro/v1/*.proto

maestrod=${MAESTROD:-$repo/target/release/maestrod}
[ -x "$maestrod" ] || cargo build --quiet --release --manifest-path "$repo/Cargo.toml" --bin maestrod
"$maestrod" --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/stdout" 2>"$work/maestrod.log" &
daemon_pid=$!
for _ in $(seq 100); do
  grep -q "listening on" "$work/stdout" 2>/dev/null && break
  kill -0 "$daemon_pid" 2>/dev/null || { cat "$work/maestrod.log"; exit 1; }
  sleep 0.1
done
addr=$(sed -n 's/^maestrod listening on \([^ ]*\).*/\1/p' "$work/stdout")
echo "== maestrod on $addr; the Python example starts the demo loop and tails it"

MAESTRO_SERVER="$addr" MAESTRO_TOKEN="$(cat "$work/data/admin.token")" DEMO_WORKSPACE="$work/demo" \
  "$venv/bin/python" "$here/maestro_demo.py" | tee "$work/out"
grep -q "SUCCEEDED" "$work/out"

echo "== a wrong token is refused"
if MAESTRO_SERVER="$addr" MAESTRO_TOKEN=wrong DEMO_WORKSPACE="$work/demo2" \
  "$venv/bin/python" "$here/maestro_demo.py" 2>"$work/err"; then
  echo "the example succeeded with a wrong token"; exit 1
fi
cat "$work/err"
grep -q UNAUTHENTICATED "$work/err"
echo "python example: ok"
