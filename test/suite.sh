#!/usr/bin/env bash
# Runs `bus-bench --suite seed --report out/report` against a redis-server
# this script starts on a free loopback port (and stops), then opens the
# report in headless Chromium (test/report-check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/report}
mkdir -p "$OUT"

port=""
for p in $(seq 17480 17580); do
  if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then port=$p; break; fi
done
[ -n "$port" ] || { echo "suite: no free port in 17480-17580" >&2; exit 1; }
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" --daemonize no --loglevel warning >"$dir/log" 2>&1 &
rpid=$!
trap 'kill $rpid 2>/dev/null; wait $rpid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done

./bin/bus-bench --redis "redis://127.0.0.1:$port" --suite seed --report "$OUT" ${SUITE_FLAGS:-}
./test/report-check.sh "$OUT/report.html"
