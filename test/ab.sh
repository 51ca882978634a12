#!/usr/bin/env bash
# A/B comparison of bus-bench on a noisy machine: the bus-bench built from
# git revision BASE (A) against the working tree's (B), or the same build
# with extra flags for B, in PAIRS alternating runs against one redis-server
# this script starts on a free loopback port (and stops).
#
#   test/ab.sh [BASE]                       BASE defaults to HEAD
#   PAIRS=10 ARGS='--scenario rpc --concurrency 20 --requests 30000' test/ab.sh HEAD~1
#   B_ARGS='--pipeline-conns 1' test/ab.sh   same build, a flag only for B
#   FIELD=p50_us test/ab.sh                  compare another top-level JSON field
#
# Runs alternate A, B, A, B... with a FLUSHALL before each, so drift of the
# machine hits both alike; the summary gives each side's median and the
# median of the per-pair ratios B/A, the figure to quote (these 2-vCPU VMs
# move absolute figures by 2x between minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:-HEAD}
PAIRS=${PAIRS:-8}
ARGS=${ARGS:---scenario rpc --concurrency 64 --requests 60000 --payload 1024}
B_ARGS=${B_ARGS:-}
FIELD=${FIELD:-throughput_rps}
case $PAIRS in '' | *[!0-9]* | 0) echo "PAIRS must be a positive integer, got '$PAIRS'" >&2; exit 2 ;; esac

work=$(mktemp -d)
cleanup_ab() { git worktree remove --force "$work/src" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup_ab EXIT # also when a build fails; replaced below once redis-server runs
git rev-parse --verify --quiet "$BASE^{commit}" >/dev/null || { echo "not a git revision: $BASE" >&2; exit 2; }
git worktree add --detach --quiet "$work/src" "$BASE"
(cd "$work/src" && go build -o "$work/bench-a" ./cmd/bus-bench)
go build -o "$work/bench-b" ./cmd/bus-bench
git worktree remove --force "$work/src"

. test/redis-server.sh
start_redis 17580 17680
trap 'kill $redis_pid 2>/dev/null; wait $redis_pid 2>/dev/null; rm -rf "$redis_dir"; cleanup_ab' EXIT
echo "A = bus-bench at $(git rev-parse --short "$BASE"), B = working tree${B_ARGS:+ with $B_ARGS}; $PAIRS pairs of: bus-bench $ARGS; field $FIELD; redis-server on $URL"

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
one() { # binary extra-args: prints FIELD of the run's JSON line
  redis-cli -p "$port" flushall >/dev/null
  # shellcheck disable=SC2086 # ARGS and the extra args are word lists
  "$1" --redis "$URL" $ARGS $2 --json | grep -o "\"$FIELD\":[0-9.]*" | head -1 | cut -d: -f2
}
as="" bs="" ratios=""
for i in $(seq "$PAIRS"); do
  a=$(one "$work/bench-a" "")
  b=$(one "$work/bench-b" "$B_ARGS")
  [ -n "$a" ] && [ -n "$b" ] || { echo "run $i printed no $FIELD" >&2; exit 1; }
  r=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.4f", b / a }')
  printf 'pair %2d: A %s  B %s  B/A %s\n' "$i" "$a" "$b" "$r"
  as+="$a"$'\n' bs+="$b"$'\n' ratios+="$r"$'\n'
done
printf 'median %s: A %s  B %s  median of B/A %s\n' "$FIELD" \
  "$(printf '%s' "$as" | median)" "$(printf '%s' "$bs" | median)" "$(printf '%s' "$ratios" | median)"
