#!/usr/bin/env bash
# SSOT tour: builds maestrod and maestroctl, starts a daemon on a free
# loopback port with a throwaway data directory, and walks through the SSOT:
# a requirements tree with dependencies, a contract with two versions, the
# hash-chained execution log, agent memory, a lock, a snapshot with diff and
# restore, and a watch that sees it all. Stops the daemon at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --bins -p maestrod -p maestroctl
bin=target/debug
work=$(mktemp -d)
trap 'kill "$daemon_pid" 2>/dev/null || true; wait "$daemon_pid" 2>/dev/null || true; rm -rf "$work"' EXIT

"$bin/maestrod" --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/stdout" 2>"$work/maestrod.log" &
daemon_pid=$!
for _ in $(seq 100); do
  grep -q "listening on" "$work/stdout" 2>/dev/null && break
  kill -0 "$daemon_pid" 2>/dev/null || { cat "$work/maestrod.log"; exit 1; }
  sleep 0.1
done
addr=$(sed -n 's/^maestrod listening on \([^ ]*\).*/\1/p' "$work/stdout")
echo "== maestrod is running on $addr (data in $work/data)"
# Every RPC needs a token: a fresh data dir has its admin's in admin.token (0600).
MAESTRO_TOKEN=$(cat "$work/data/admin.token")
export MAESTRO_SERVER="http://$addr" MAESTRO_PROJECT=todo MAESTRO_TOKEN
ctl() { echo "\$ maestroctl $*"; "$bin/maestroctl" "$@"; echo; }

mkdir -p "$work/todo"
ctl project create todo --name "To-do service" --workspace "$work/todo"
# Follow every change of the project from its first revision, as JSON lines.
"$bin/maestroctl" -o json watch --from-revision 1 >"$work/events.jsonl" 2>/dev/null &
watch_pid=$!
ctl req add "Build a to-do service" --accept "todos can be listed, added and completed"
ctl req add "REST API for todos" --parent R1 --role backend --accept "GET/POST /todos"
ctl req add "Web page listing todos" --parent R1 --role frontend --depends-on R2
ctl req add "API tests" --parent R1 --role test --depends-on R2
ctl req list
ctl req ready
ctl contract put todo-api --kind json-schema --owner backend --consumer frontend \
  --spec '{"type":"object","required":["id","title","done"]}'
ctl contract put todo-api --kind json-schema --owner backend --consumer frontend --status proposed \
  --spec '{"type":"object","required":["id","title","done","created_at"]}'
ctl contract versions todo-api
ctl snapshot create planned --description "tree and contract agreed"
ctl req set-status R2 claimed --assignee backend
ctl req set-status R2 in-progress
ctl log append write_file --agent backend --target src/api/todos.py --outcome allowed
ctl req set-status R2 done --reason "tests pass"
ctl memory put backend framework "flask, sqlite"
ctl lock acquire src/api --holder backend --ttl 30
ctl req list
ctl req ready
echo "# a dependency cycle is refused:"
ctl req depend R2 --on R3 || true
ctl log list
ctl log verify
ctl snapshot diff planned
ctl snapshot restore planned --yes
ctl req list
sleep 0.3
kill "$watch_pid" 2>/dev/null || true
echo "== the watch saw $(wc -l <"$work/events.jsonl") events; the first three:"
head -n 3 "$work/events.jsonl"
echo
echo "== done; stopping maestrod"
