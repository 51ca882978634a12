#!/usr/bin/env bash
# Runs `bus-bench --suite cluster --report out/cluster`: partitions on a
# Redis Cluster of 3 masters + 3 replicas (test/redis-cluster.sh) against 1
# and 12 partitions on a standalone redis-server, then failovers under load.
# Both are started here on free loopback ports and stopped at the end; the
# report is opened in headless Chromium (test/report-check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/cluster}
mkdir -p "$OUT"

. test/redis-server.sh
start_redis 17680 17780
cluster_dir=$(mktemp -d)
trap 'test/redis-cluster.sh stop "$cluster_dir"; kill $redis_pid 2>/dev/null; wait $redis_pid 2>/dev/null; rm -rf "$redis_dir"' EXIT
CLUSTER_URL=$(test/redis-cluster.sh start "$cluster_dir" 34000)

status=0
./bin/bus-bench --redis "$CLUSTER_URL" --suite cluster --compare-redis "$URL" --report "$OUT" ${SUITE_FLAGS:-} || status=$?
MIN_FIGURES=2 ./test/report-check.sh "$OUT/report.html"
exit "$status"
