#!/usr/bin/env bash
# Repository check (make check-repo, run by make test and make lint): fails
# when a tracked file is an executable binary (ELF, Mach-O, PE, or any file
# with the executable bit that holds NUL bytes) or is larger than 1 MiB.
# Build outputs belong in ./bin (make build), which is ignored.
#
# Usage: test/check-repo.sh [DIR]   (default: the repository of this script)
set -uo pipefail
dir=${1:-"$(dirname "$0")/.."}
cd "$dir" || exit 2
max=$((1024 * 1024))

if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  list() { git ls-files -z; }
else
  # Not a git checkout (an exported tree): check every file but build outputs.
  list() { find . -path ./.git -prune -o -path ./bin -prune -o -path ./out -prune -o -type f -print0 | sed -z 's|^\./||'; }
fi

bad=0
while IFS= read -r -d '' f; do
  [ -f "$f" ] || continue # deleted in the work tree
  magic=$(head -c 4 "$f" | od -An -tx1 | tr -d ' \n')
  case "$magic" in
    7f454c46* | feedface | feedfacf | cefaedfe | cffaedfe | cafebabe | 4d5a*)
      echo "check-repo: $f is an executable binary (magic $magic): build outputs go to ./bin, which is ignored" >&2
      bad=1
      continue
      ;;
  esac
  if [ -x "$f" ] && [ "$(head -c 8192 "$f" | tr -d '\000' | wc -c)" -ne "$(head -c 8192 "$f" | wc -c)" ]; then
    echo "check-repo: $f is executable and binary: build outputs go to ./bin, which is ignored" >&2
    bad=1
    continue
  fi
  size=$(stat -c %s "$f")
  if [ "$size" -gt "$max" ]; then
    echo "check-repo: $f is $size bytes (more than 1 MiB): keep large files out of the repository" >&2
    bad=1
  fi
done < <(list)
if [ "$bad" -ne 0 ]; then
  exit 1
fi
echo "check-repo: ok (no tracked binaries, no file over 1 MiB)"
