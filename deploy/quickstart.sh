#!/usr/bin/env bash
# Quickstart: builds maestrod and maestroctl, then runs the demo:
#   maestroctl run --demo [--workspace DIR]
# maestroctl starts a local maestrod for you (socket and data under ~/.maestro;
# it keeps running for later commands; `maestroctl daemon stop` stops it). The demo's
# AutoLoop plans a to-do service, builds its API, client and tests with the
# scripted model, fails its first test run on purpose, rolls back, replans,
# and succeeds. Arguments are passed to `maestroctl run --demo`.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cargo build --quiet --release --manifest-path "$repo/Cargo.toml" --bin maestrod --bin maestroctl
# Wherever cargo puts its builds (CARGO_TARGET_DIR, a config file, or ./target).
target=$(cargo metadata --quiet --format-version 1 --no-deps --manifest-path "$repo/Cargo.toml" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
exec "$target/release/maestroctl" run --demo "$@"
