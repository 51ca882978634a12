#!/usr/bin/env bash
# Opens a bus-bench report in headless Chromium (installed with apt when
# missing): fails on console errors or when a chart is missing from the
# rendered page, and leaves a full-page screenshot next to the report.
set -euo pipefail
report=$(realpath "${1:?usage: report-check.sh out/report/report.html}")
if ! command -v chromium >/dev/null 2>&1; then
  echo "report-check: installing chromium with apt"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
shot="${report%.html}.png"
flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run --disable-extensions)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The DOM after rendering: every chart must be there as an <svg>.
dom=$(timeout 120 chromium "${flags[@]}" --enable-logging=stderr --v=0 --dump-dom "file://$report" 2>"$log")
charts=$(grep -o '<figure id="[a-z-]*"' <<<"$dom" | wc -l)
svgs=$(grep -o '<svg' <<<"$dom" | wc -l)
if grep -E 'CONSOLE|Uncaught|ERR_FILE' "$log" >&2; then
  echo "report-check: the page logged errors (above)" >&2
  exit 1
fi
if [ "$charts" -lt "${MIN_FIGURES:-6}" ] || [ "$svgs" -ne "$charts" ]; then
  echo "report-check: $charts figures, $svgs inline SVGs rendered; want ${MIN_FIGURES:-6} or more, one SVG each" >&2
  exit 1
fi
timeout 120 chromium "${flags[@]}" --window-size=1400,9000 --screenshot="$shot" "file://$report" >/dev/null 2>&1
echo "report-check: $charts charts rendered without console errors; screenshot $shot"
