#!/usr/bin/env bash
# Runs the README's "Running it yourself" commands as written, one by one, in
# the HOME given (CI runs it right after the quickstart, with the
# quickstart's daemon still running, as a new user would). `watch` follows
# changes until Ctrl-C: it gets 3 seconds, then SIGINT.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
block=$(awk '/^## Running it yourself/ {on = 1; next} on && /^```sh/ {inside = 1; next} inside && /^```/ {exit} inside {print}' README.md)
[ -n "$block" ] || { echo "README has no 'Running it yourself' block" >&2; exit 1; }
n=0
while IFS= read -r line; do
  command=${line%%#*}
  command=$(echo "$command" | sed 's/[[:space:]]*$//')
  [ -n "$command" ] || continue
  n=$((n + 1))
  echo "\$ $command"
  if [[ "$command" == *" watch"* ]]; then
    status=0
    timeout --signal=INT 3 bash -c "$command" || status=$?
    # 124: still following when the time was up; 130: it ended on Ctrl-C as it says.
    [ "$status" = 124 ] || [ "$status" = 130 ] || [ "$status" = 0 ] || { echo "failed ($status): $command" >&2; exit 1; }
  else
    eval "$command" || { echo "failed: $command" >&2; exit 1; }
  fi
done <<< "$block"
echo "README 'Running it yourself': $n commands ran"
