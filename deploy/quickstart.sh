#!/usr/bin/env bash
# Quickstart: builds maestrod and maestroctl, then runs the demo:
#   maestroctl run --demo [--workspace DIR]
# maestroctl starts a local maestrod for you (data under ~/.maestro, it keeps
# running for later commands; stop it with `pkill -x maestrod`). The demo's
# AutoLoop plans a to-do service, builds its API, client and tests with the
# scripted model, fails its first test run on purpose, rolls back, replans,
# and succeeds. Arguments are passed to `maestroctl run --demo`.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cargo build --quiet --release --manifest-path "$repo/Cargo.toml" --bin maestrod --bin maestroctl
exec "$repo/target/release/maestroctl" run --demo "$@"
