# Sourced by test/redis-cluster.sh and test/redis-sentinel.sh: what both
# rigs do the same way.

# free_block BASE COUNT [BUS_OFFSET]: the first port p from BASE (in steps
# of 10, up to BASE+2000) with p … p+COUNT-1 free on loopback (and, with
# BUS_OFFSET, p+BUS_OFFSET … too: a cluster node's bus port); empty if
# none.
free_block() {
  local base=$1 count=$2 bus=${3:-} p i ok
  for p in $(seq "$base" 10 $((base + 2000))); do
    ok=1
    for ((i = 0; i < count; i++)); do
      port_free $((p + i)) || { ok=0; break; }
      if [ -n "$bus" ]; then port_free $((p + i + bus)) || { ok=0; break; }; fi
    done
    if [ $ok = 1 ]; then echo "$p"; return; fi
  done
}

# port_free P: P can be bound on loopback now. A connect test is not
# enough: a port held by an outgoing connection (one of Linux's ephemeral
# ports, 32768-60999) refuses connections and still cannot be bound.
port_free() {
  python3 -c 'import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)' "$1" 2>/dev/null
}

# stop_rig DIR: stop every process with a pid file in DIR (TERM, then KILL
# after 5 s) and remove DIR.
stop_rig() {
  local dir=$1 f pid
  [ -d "$dir" ] || return 0
  for f in "$dir"/*.pid; do
    [ -e "$f" ] || continue
    kill "$(cat "$f")" 2>/dev/null || true
  done
  for f in "$dir"/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$dir"
}
