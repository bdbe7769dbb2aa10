#!/usr/bin/env bash
# A 3-member etcd cluster on loopback ports, for the tests on the etcd backend and for trying
# `maestrod --store etcd://...` by hand. Needs Debian's etcd-server (apt-get install etcd-server).
#
#   deploy/etcd-cluster.sh start [DIR]   # prints the --store address once the cluster is healthy
#   deploy/etcd-cluster.sh stop [DIR]
#   deploy/etcd-cluster.sh kill N [DIR]  # kill -9 member N (1-3), to see the cluster carry on
#
# Members n1..n3 serve clients on 127.0.0.1:23791..23793 (peers on 23801..23803); their data and
# logs go under DIR (default /tmp/maestro-etcd).
set -euo pipefail
action=${1:-start}
if [[ $action == kill ]]; then member=${2:?member number 1-3}; dir=${3:-/tmp/maestro-etcd}; else dir=${2:-/tmp/maestro-etcd}; fi
cluster="n1=http://127.0.0.1:23801,n2=http://127.0.0.1:23802,n3=http://127.0.0.1:23803"
endpoints="127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793"

stop_member() {
  local pidfile="$dir/n$1.pid"
  [[ -f $pidfile ]] || return 0
  local pid
  pid=$(cat "$pidfile")
  kill "-${2:-TERM}" "$pid" 2>/dev/null || true
  # Wait until it is gone, so its ports and data directory are free again.
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

case $action in
  start)
    command -v etcd >/dev/null || { echo "etcd-cluster: etcd not found (apt-get install etcd-server)" >&2; exit 1; }
    mkdir -p "$dir"
    # A fresh cluster: every old member stops before any new one starts.
    for n in 1 2 3; do stop_member "$n"; rm -rf "$dir/n$n"; done
    for n in 1 2 3; do
      etcd --name "n$n" --data-dir "$dir/n$n" \
        --listen-client-urls "http://127.0.0.1:2379$n" --advertise-client-urls "http://127.0.0.1:2379$n" \
        --listen-peer-urls "http://127.0.0.1:2380$n" --initial-advertise-peer-urls "http://127.0.0.1:2380$n" \
        --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token maestro-local \
        --max-request-bytes 67108864 --max-txn-ops 100000 >"$dir/n$n.log" 2>&1 &
      echo $! >"$dir/n$n.pid"
    done
    for _ in $(seq 1 100); do
      healthy=0
      for n in 1 2 3; do
        if curl -fsS "http://127.0.0.1:2379$n/health" 2>/dev/null | grep -q '"health":"true"'; then
          healthy=$((healthy + 1))
        fi
      done
      if [[ $healthy == 3 ]]; then
        echo "etcd://$endpoints"
        exit 0
      fi
      sleep 0.2
    done
    echo "etcd-cluster: the cluster did not become healthy; logs in $dir" >&2
    tail -n 5 "$dir"/n*.log >&2
    exit 1
    ;;
  stop)
    for n in 1 2 3; do stop_member "$n"; done
    ;;
  kill)
    stop_member "$member" KILL
    ;;
  *)
    echo "usage: $0 start|stop [DIR] | kill N [DIR]" >&2
    exit 2
    ;;
esac
