#!/usr/bin/env bash
# A throwaway Redis Sentinel setup on loopback: one master, one replica and
# three sentinels watching the master set "mymaster" (quorum 2), for the
# Sentinel tests (make test-cluster runs their long versions).
#
#   test/redis-sentinel.sh start DIR [BASE]
#       start the five processes on the first five free consecutive ports
#       from BASE (default 32000: master, replica, then the sentinels),
#       wait until the replica is in sync and every sentinel knows the
#       replica and the other sentinels, and print the URL
#       redis://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3?master_set=mymaster
#       (also written to DIR/url; the ports to DIR/ports).
#   test/redis-sentinel.sh stop DIR
#       stop them and remove DIR.
#
# Sentinels declare the master down after 1 s (down-after-milliseconds
# 1000, against 30000 by default), so a failover completes within seconds.
# With SENTINEL_PASSWORD set, the sentinels require it (requirepass, and
# sentinel-pass among themselves); the data nodes need no password.
set -euo pipefail
. "$(dirname "$0")/rig-lib.sh"

usage() { echo "usage: $0 start DIR [BASE] | stop DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1 dir=$2

case $cmd in
start)
  base=${3:-32000}
  mkdir -p "$dir"
  trap 'status=$?; [ $status = 0 ] || stop_rig "$dir"; exit $status' EXIT # a failed start leaves nothing running
  first=$(free_block "$base" 5)
  [ -n "$first" ] || { echo "redis-sentinel.sh: no five free ports from $base" >&2; exit 1; }
  m=$first r=$((first + 1))
  common=(--bind 127.0.0.1 --save '' --appendonly no --dir "$dir" --daemonize yes --loglevel warning --repl-diskless-sync-delay 0)
  redis-server --port "$m" "${common[@]}" --pidfile "$dir/$m.pid" --logfile "$dir/$m.log"
  redis-server --port "$r" "${common[@]}" --pidfile "$dir/$r.pid" --logfile "$dir/$r.log" --replicaof 127.0.0.1 "$m"
  for p in $m $r; do
    for _ in $(seq 200); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.05; done
  done
  for _ in $(seq 400); do
    redis-cli -p "$r" info replication | grep -q 'master_link_status:up' && break
    sleep 0.05
  done
  sports=()
  for i in 2 3 4; do
    s=$((first + i))
    sports+=("$s")
    cat >"$dir/sentinel-$s.conf" <<CONF
port $s
bind 127.0.0.1
daemonize yes
pidfile $dir/$s.pid
logfile $dir/$s.log
dir $dir
sentinel monitor mymaster 127.0.0.1 $m 2
sentinel down-after-milliseconds mymaster 1000
sentinel failover-timeout mymaster 10000
sentinel parallel-syncs mymaster 1
CONF
    if [ -n "${SENTINEL_PASSWORD:-}" ]; then
      printf 'requirepass %s\nsentinel sentinel-pass %s\n' "$SENTINEL_PASSWORD" "$SENTINEL_PASSWORD" >>"$dir/sentinel-$s.conf"
    fi
    redis-server "$dir/sentinel-$s.conf" --sentinel
  done
  for s in "${sports[@]}"; do
    for _ in $(seq 400); do
      out=$(REDISCLI_AUTH="${SENTINEL_PASSWORD:-}" redis-cli -p "$s" sentinel master mymaster 2>/dev/null | tr '\n' ' ')
      [[ $out == *"num-slaves 1 "* && $out == *"num-other-sentinels 2 "* ]] && break
      sleep 0.05
    done
  done
  echo "$m $r ${sports[*]}" >"$dir/ports"
  url="redis://127.0.0.1:${sports[0]},127.0.0.1:${sports[1]},127.0.0.1:${sports[2]}?master_set=mymaster"
  echo "$url" >"$dir/url"
  echo "$url"
  ;;
stop)
  stop_rig "$dir"
  ;;
*) usage ;;
esac
