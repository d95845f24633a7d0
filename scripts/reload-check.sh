#!/usr/bin/env bash
# Live reload under wrk: corelb serves from a config file while wrk runs (one
# keep-alive load, one Connection: close load); the backend set is changed with
# SIGHUP every second, ending on a backend that had no traffic before. Passes
# when wrk reports no socket error and no non-2xx response, and the last
# backend took requests. Loopback only; bounded (about 10 s); stops by itself.
#
# Usage: scripts/reload-check.sh [BASE_PORT]   (default 18100; uses BASE_PORT..+3)
#        needs wrk and curl: apt-get install wrk curl
set -euo pipefail
cd "$(dirname "$0")/.."
base="${1:-18100}"
proxy=$base; a=$((base + 1)); b=$((base + 2)); c=$((base + 3))
for tool in wrk curl; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed: apt-get install -y $tool" >&2; exit 2; }
done

cargo build --release --quiet
bin=./target/release/corelb
dir=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
for port in $a $b $c; do
  $bin backend --listen "127.0.0.1:$port" --body "backend $port" 2>"$dir/backend-$port.log" &
  pids+=($!)
done
config() {  # config PORT...: the backends of the config file
  { echo "listen = \"127.0.0.1:$proxy\""; echo "workers = 2"; echo "admin = \"127.0.0.1:$((base + 4))\""
    for port in "$@"; do printf '[[backend]]\naddress = "127.0.0.1:%s"\n' "$port"; done; } >"$dir/corelb.toml"
}
config $a $b
$bin check-config "$dir/corelb.toml"
$bin serve --config "$dir/corelb.toml" 2>"$dir/corelb.log" &
lb=$!; pids+=($lb)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$proxy/" && break; sleep 0.1; done

wrk -t1 -c50 -d8s "http://127.0.0.1:$proxy/" >"$dir/wrk-keepalive.txt" &
w1=$!
wrk -t1 -c10 -d8s -H 'Connection: close' "http://127.0.0.1:$proxy/" >"$dir/wrk-close.txt" &
w2=$!
for set in "$b" "$a $c" "$a" "$a $b $c" "$b $c" "$c"; do
  sleep 1
  # shellcheck disable=SC2086
  config $set
  kill -HUP $lb
done
wait $w1 $w2
cat "$dir/wrk-keepalive.txt" "$dir/wrk-close.txt"
grep reload "$dir/corelb.log" || true
status=$(curl -s "http://127.0.0.1:$((base + 4))/status")
echo "$status"
fail=0
if grep -qE "Socket errors|Non-2xx" "$dir/wrk-keepalive.txt" "$dir/wrk-close.txt"; then
  echo "FAIL: wrk reported errors across the reloads" >&2; fail=1
fi
if [ "$(grep -c reloaded "$dir/corelb.log")" -ne 6 ]; then
  echo "FAIL: expected 6 reloads in the log" >&2; fail=1
fi
for _ in 1 2 3; do
  [ "$(curl -s "http://127.0.0.1:$proxy/")" = "backend $c" ] || { echo "FAIL: the last backend set (only $c) does not take the traffic" >&2; fail=1; }
done
[ $fail -eq 0 ] && echo "reload check passed"
exit $fail
