#!/usr/bin/env bash
# Runs `bus-bench --suite seed --report out/report` against a redis-server
# this script starts on a free loopback port (and stops), then opens the
# report in headless Chromium (test/report-check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/report}
mkdir -p "$OUT"

. test/redis-server.sh
start_redis 17480 17580

./bin/bus-bench --redis "$URL" --suite seed --report "$OUT" ${SUITE_FLAGS:-}
./test/report-check.sh "$OUT/report.html"
