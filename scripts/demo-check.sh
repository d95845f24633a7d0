#!/usr/bin/env bash
# The issue's acceptance check, as a new user would do it: start `corelb demo`,
# check that curl alternates between the two backends, run
# `wrk -c50 -d5s` against it, and require zero errors. Loopback only; stops by itself.
#
# Usage: scripts/demo-check.sh [PORT]   (default 8080; needs wrk: apt-get install wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
port="${1:-8080}"
url="http://127.0.0.1:${port}/"

if ! command -v wrk >/dev/null; then
  echo "wrk is not installed; install it with: apt-get update && apt-get install -y wrk" >&2
  exit 2
fi

cargo build --release --quiet
out=$(mktemp)
./target/release/corelb demo --listen "127.0.0.1:${port}" >"$out" 2>&1 &
pid=$!
trap 'kill -INT $pid 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 100); do
  curl -s -o /dev/null "$url" && break
  sleep 0.1
done
cat "$out"

a=$(curl -s "$url"); b=$(curl -s "$url"); c=$(curl -s "$url")
echo "curl: '$a' / '$b' / '$c'"
if [ "$a" = "$b" ] || [ "$a" != "$c" ]; then
  echo "FAIL: responses do not alternate between the two backends" >&2
  exit 1
fi

report=$(wrk -t1 -c50 -d5s "$url")
echo "$report"
if echo "$report" | grep -qE "Socket errors|Non-2xx"; then
  echo "FAIL: wrk reported errors" >&2
  exit 1
fi

kill -INT $pid
for _ in $(seq 50); do
  kill -0 $pid 2>/dev/null || break
  sleep 0.1
done
if kill -0 $pid 2>/dev/null; then
  echo "FAIL: corelb demo did not stop on Ctrl-C" >&2
  exit 1
fi
wait $pid || { echo "FAIL: corelb demo exited with $?" >&2; exit 1; }
trap - EXIT
tail -n 2 "$out"; rm -f "$out"
echo "demo check passed"
