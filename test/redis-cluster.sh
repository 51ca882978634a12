#!/usr/bin/env bash
# A throwaway Redis Cluster of 3 masters and 3 replicas on loopback, for
# tests and benchmarks (make test-cluster, the cluster tests, bus-bench's
# failover scenario).
#
#   test/redis-cluster.sh start DIR [BASE]
#       start six redis-server nodes on the first six free consecutive ports
#       from BASE (default 20000; each also needs port+10000 for the cluster
#       bus: keep BASE+10000 below 32768, where Linux's ephemeral ports
#       begin, or an outgoing connection may hold a bus port), form the
#       cluster (redis-cli --cluster create --cluster-replicas 1), wait until
#       every node reports cluster_state:ok, and print the seed URL (also
#       written to DIR/url). Node files, logs and pid files live in DIR. A
#       start that fails stops the nodes it started.
#   test/redis-cluster.sh stop DIR
#       stop every node of DIR and remove DIR.
#
# cluster-node-timeout is NODE_TIMEOUT ms (default 2000, against Redis's
# 15000) so that a failover completes within a few seconds; replicas sync
# without the diskless delay, and the script returns once every replica's
# link is up (a replica that never synced cannot take over).
set -euo pipefail
. "$(dirname "$0")/rig-lib.sh"

usage() { echo "usage: $0 start DIR [BASE] | stop DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1 dir=$2

case $cmd in
start)
  base=${3:-20000}
  mkdir -p "$dir"
  trap 'status=$?; [ $status = 0 ] || stop_rig "$dir"; exit $status' EXIT # a failed start leaves nothing running
  first=$(free_block "$base" 6 10000)
  [ -n "$first" ] || { echo "redis-cluster.sh: no six free ports from $base" >&2; exit 1; }
  ports=()
  for i in 0 1 2 3 4 5; do
    p=$((first + i))
    ports+=("$p")
    redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file "$dir/nodes-$p.conf" --cluster-node-timeout "${NODE_TIMEOUT:-2000}" \
      --save '' --appendonly no --dir "$dir" --daemonize yes --repl-diskless-sync-delay 0 \
      --pidfile "$dir/$p.pid" --logfile "$dir/$p.log" --loglevel warning
  done
  for p in "${ports[@]}"; do
    for _ in $(seq 200); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.05; done
    redis-cli -p "$p" ping >/dev/null || { echo "redis-cluster.sh: node $p did not start (see $dir/$p.log)" >&2; exit 1; }
  done
  echo "${ports[*]}" >"$dir/ports"
  addrs=()
  for p in "${ports[@]}"; do addrs+=("127.0.0.1:$p"); done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 ||
    { echo "redis-cluster.sh: cluster create failed:" >&2; cat "$dir/create.log" >&2; exit 1; }
  for p in "${ports[@]}"; do
    for _ in $(seq 400); do
      redis-cli -p "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break
      sleep 0.05
    done
    redis-cli -p "$p" cluster info | grep -q 'cluster_state:ok' || { echo "redis-cluster.sh: node $p never reported cluster_state:ok" >&2; exit 1; }
  done
  # A replica that has not finished its first sync cannot take over: wait
  # for every replica's link to its master.
  for p in "${ports[@]}"; do
    for _ in $(seq 400); do
      info=$(redis-cli -p "$p" info replication 2>/dev/null)
      grep -q 'role:master' <<<"$info" && break
      grep -q 'master_link_status:up' <<<"$info" && break
      sleep 0.05
    done
  done
  url="redis://127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
  echo "$url" >"$dir/url"
  echo "$url"
  ;;
stop)
  stop_rig "$dir"
  ;;
*) usage ;;
esac
