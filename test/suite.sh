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

# A failed target makes bus-bench exit 1 after writing the report: check the
# report all the same, then pass the status on.
status=0
./bin/bus-bench --redis "$URL" --suite seed --report "$OUT" ${SUITE_FLAGS:-} || status=$?
./test/report-check.sh "$OUT/report.html"
exit "$status"
