#!/usr/bin/env bash
# The admin status page in a real browser: corelb with two backends and its
# admin endpoint, some traffic (wrk, 2 s), then headless chromium loads
# http://ADMIN/ and runs its script: the page's text (the DOM after the script
# ran) must name every backend, as up, with its requests, latency and bytes, and every
# worker; a screenshot is saved for a person to look at. Loopback only; about
# 15 s; stops by itself.
#
# Usage: scripts/status-page-check.sh [BASE_PORT] [SCREENSHOT.png]
#        (default 18700, uses BASE_PORT..+3; screenshot in results/status-page.png)
#        needs chromium and wrk: apt-get install --no-install-recommends chromium wrk
set -euo pipefail
cd "$(dirname "$0")/.."
base="${1:-18700}"
shot="${2:-results/status-page.png}"
proxy=$base; admin=$((base + 1)); a=$((base + 2)); b=$((base + 3))
for tool in chromium wrk curl; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed: apt-get install -y --no-install-recommends $tool" >&2; exit 2; }
done

cargo build --release --quiet
bin=./target/release/corelb
dir=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
trap "exit 1" INT TERM
for port in $a $b; do
  $bin backend --listen "127.0.0.1:$port" 2>/dev/null &
  pids+=($!)
done
$bin serve --listen "127.0.0.1:$proxy" --admin "127.0.0.1:$admin" --workers 2 \
  --backend "127.0.0.1:$a" --backend "127.0.0.1:$b,weight=3" --algorithm weighted-round-robin 2>/dev/null &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$proxy/" && break; sleep 0.1; done
wrk -t1 -c10 -d2s "http://127.0.0.1:$proxy/" >/dev/null

browse() {  # browse ARGS...: headless chromium on the page, its script given 5 s
  chromium --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage \
    --user-data-dir="$dir/profile" --virtual-time-budget=5000 "$@" "http://127.0.0.1:$admin/" 2>/dev/null
}
browse --dump-dom >"$dir/dom.html"
mkdir -p "$(dirname "$shot")"
browse --window-size=1200,900 --screenshot="$shot" >/dev/null
fail=0
text=$(sed 's/<[^>]*>/ /g' "$dir/dom.html")
# The text of the table row whose first cell is $1 (empty if there is none).
row_of() {
  sed 's#</tr>#</tr>\n#g' "$dir/dom.html" | grep "<tr><td>$1</td>" | head -1 | sed 's/<[^>]*>/ /g' | tr -s ' '
}
for backend in "127.0.0.1:$a" "127.0.0.1:$b"; do
  row=$(row_of "$backend")
  echo "backend row: $row"
  echo "$row" | grep -q " up ready " || { echo "FAIL: $backend is not shown up and ready" >&2; fail=1; }
  # The last two cells: bytes from and to it, after the load some KiB at least.
  echo "$row" | grep -Eq " [0-9.]+ (KiB|MiB|GiB) [0-9.]+ (KiB|MiB|GiB) ?$" || { echo "FAIL: $backend's bytes are not shown" >&2; fail=1; }
done
for worker in 0 1; do
  row=$(row_of "$worker")
  echo "worker row: $row"
  [ -n "$row" ] || { echo "FAIL: worker $worker is not shown" >&2; fail=1; }
  # (SO_REUSEPORT may give a worker few of wrk's ten connections: any size.)
  echo "$row" | grep -Eq " [0-9.]+ (B|KiB|MiB|GiB) [0-9.]+ (B|KiB|MiB|GiB) ?$" || { echo "FAIL: worker $worker's bytes are not shown" >&2; fail=1; }
done
echo "$text" | grep -q "corelb $($bin --version | cut -d' ' -f2)" || { echo "FAIL: the version is not shown" >&2; fail=1; }
echo "$text" | grep -q "weighted-round-robin" || { echo "FAIL: the algorithm is not shown" >&2; fail=1; }
[ -s "$shot" ] || { echo "FAIL: no screenshot" >&2; fail=1; }
echo "screenshot: $shot"
[ $fail -eq 0 ] && echo "status page check passed"
exit $fail
