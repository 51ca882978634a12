# Sourced by the bench scripts: start_redis LOW HIGH starts a throwaway
# redis-server (no persistence) on the first free loopback port in
# LOW..HIGH, sets $port and $URL, and stops it when the script exits.
start_redis() {
  port=""
  for p in $(seq "$1" "$2"); do
    if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then port=$p; break; fi
  done
  [ -n "$port" ] || { echo "no free port in $1-$2" >&2; exit 1; }
  redis_dir=$(mktemp -d)
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$redis_dir" --daemonize no --loglevel warning >"$redis_dir/log" 2>&1 &
  redis_pid=$!
  trap 'kill $redis_pid 2>/dev/null; wait $redis_pid 2>/dev/null; rm -rf "$redis_dir"' EXIT
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
  URL="redis://127.0.0.1:$port"
}
