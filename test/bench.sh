#!/usr/bin/env bash
# Runs the bus-bench scenarios against a redis-server this script starts on a
# free loopback port (and stops), next to Redis's own ceiling measured in the
# same run:
#   R = redis-benchmark -q -c 50 -P 64 -n 1000000 XADD s '*' f <1 KiB>  (ops/s)
#   L = p50 of redis-benchmark -c 1 -n 20000 XADD s '*' f <1 KiB>      (µs)
# each the median of RUNS measurements.
# Every point runs RUNS times (default 5); the summary shows medians and the
# ratios the core-bus issue sets as targets. Results: out/bench/results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
REQS=${REQS:-50000}
OUT=out/bench
mkdir -p "$OUT"
: > "$OUT/results.jsonl"

. test/redis-server.sh
start_redis 17379 17479
echo "redis-server $(redis-server --version | grep -o 'v=[0-9.]*') on $URL, $(nproc) CPUs, $(go version | cut -d' ' -f3)"

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# R and L are medians of RUNS measurements too: one redis-benchmark run on a
# shared VM can land anywhere in a 2x range.
val=$(head -c 1024 /dev/zero | tr '\0' 'x')
Rs="" Ls=""
for i in $(seq "$RUNS"); do
  Rs+="$(redis-benchmark -p "$port" -q -c 50 -P 64 -n 1000000 --csv XADD s '*' f "$val" | tail -1 | cut -d, -f2 | tr -d '"')"$'\n'
  redis-cli -p "$port" del s >/dev/null
  Ls+="$(redis-benchmark -p "$port" -c 1 -n 20000 --csv XADD s '*' f "$val" | tail -1 | cut -d, -f5 | tr -d '"')"$'\n'
  redis-cli -p "$port" del s >/dev/null
done
R=$(printf '%s' "$Rs" | median)
L=$(printf '%s' "$Ls" | median)
L_US=$(awk -v l="$L" 'BEGIN { printf "%.0f", l * 1000 }')
echo "R = $R XADD/s (pipelined ceiling; runs: $(echo $Rs)), L = $L_US µs (p50, one client; runs: $(echo $Ls) ms)"
field() { grep -o "\"$1\":[0-9.]*" | head -1 | cut -d: -f2; } # the top-level field comes before any in "stages"

point() { # scenario concurrency requests
  local sc=$1 c=$2 n=$3 tputs="" p50s="" ccpu="" rcpu=""
  for i in $(seq "$RUNS"); do
    redis-cli -p "$port" flushall >/dev/null
    line=$(./bin/bus-bench --redis "$URL" --scenario "$sc" --concurrency "$c" --requests "$n" --payload 1024 --json)
    echo "$line" >> "$OUT/results.jsonl"
    tputs+="$(echo "$line" | field throughput_rps)"$'\n'
    p50s+="$(echo "$line" | field p50_us)"$'\n'
    ccpu+="$(echo "$line" | field client_cpu_us)"$'\n'
    rcpu+="$(echo "$line" | field redis_cpu_us)"$'\n'
  done
  local t p
  t=$(printf '%s' "$tputs" | median)
  p=$(printf '%s' "$p50s" | median)
  printf '%-8s c=%-4s median %8.0f/s (%.2f x R)  p50 %6s µs (%.2f x L)  CPU/request: bus-bench %s µs, redis %s µs\n' "$sc" "$c" "$t" \
    "$(awk -v a="$t" -v b="$R" 'BEGIN{print a/b}')" "$p" "$(awk -v a="$p" -v b="$L_US" 'BEGIN{print a/b}')" \
    "$(printf '%s' "$ccpu" | median)" "$(printf '%s' "$rcpu" | median)"
}

point rpc 1 "$((REQS / 10))"
point rpc 64 "$REQS"
point rpc 256 "$REQS"
point publish 256 "$((REQS * 2))"
echo "targets: rpc c=64,256 >= 0.2 x R; rpc c=1 p50 <= 4 x L; publish c=256 >= 0.3 x R"
