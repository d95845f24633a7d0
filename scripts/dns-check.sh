#!/usr/bin/env bash
# Backends from DNS under load: dnsmasq on loopback answers app.test with two
# addresses, each an origin (127.0.0.5 and 127.0.0.6, one port); corelb finds
# them every second (--resolve-interval 1s --dns-server). While wrk runs, the
# record changes to a third address (127.0.0.7): the traffic must move to it
# within about one interval, and then dnsmasq is stopped: the last set must
# stay. Passes with zero wrk errors. Loopback only; about 10 s; stops by itself.
#
# Usage: scripts/dns-check.sh [BASE_PORT]   (default 18500; uses BASE_PORT..+2)
#        needs dnsmasq, wrk and curl: apt-get install dnsmasq-base wrk curl
set -euo pipefail
cd "$(dirname "$0")/.."
base="${1:-18500}"
dns=$base; origin=$((base + 1)); proxy=$((base + 2))
for tool in dnsmasq wrk curl; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed: apt-get install -y ${tool/dnsmasq/dnsmasq-base}" >&2; exit 2; }
done

cargo build --release --quiet
bin=./target/release/corelb
dir=$(mktemp -d)
chmod 755 "$dir"   # dnsmasq reads the hosts file as an unprivileged user
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
trap "exit 1" INT TERM

for n in 5 6 7; do
  $bin backend --listen "127.0.0.$n:$origin" --body "origin 127.0.0.$n" 2>"$dir/origin-$n.log" &
  pids+=($!)
done
printf '127.0.0.5 app.test\n127.0.0.6 app.test\n' >"$dir/hosts"
chmod 644 "$dir/hosts"
dnsmasq --keep-in-foreground --no-daemon --listen-address=127.0.0.1 --bind-interfaces \
  --port="$dns" --no-resolv --no-hosts --local=/test/ --local-ttl=1 --log-facility=- \
  --addn-hosts="$dir/hosts" --pid-file="$dir/dnsmasq.pid" 2>"$dir/dnsmasq.log" &
dnsmasq_pid=$!; pids+=($dnsmasq_pid)
for _ in $(seq 50); do grep -q "read $dir/hosts" "$dir/dnsmasq.log" 2>/dev/null && break; sleep 0.1; done

$bin serve --listen "127.0.0.1:$proxy" --workers 2 --backend "app.test:$origin" \
  --resolve-interval 1s --dns-server "127.0.0.1:$dns" 2>"$dir/corelb.log" &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$proxy/" && break; sleep 0.1; done

fail=0
seen() {  # seen N: the distinct bodies of N requests
  for _ in $(seq "$1"); do curl -s "http://127.0.0.1:$proxy/"; echo; done | sort -u | tr '\n' ' '
}
echo "before: $(seen 6)"
[ "$(seen 6)" = "origin 127.0.0.5 origin 127.0.0.6 " ] || { echo "FAIL: both addresses should serve" >&2; fail=1; }

wrk -t1 -c20 -d8s "http://127.0.0.1:$proxy/" >"$dir/wrk.txt" &
w=$!
sleep 2
printf '127.0.0.7 app.test\n' >"$dir/hosts"
kill -HUP $dnsmasq_pid
changed=$(date +%s.%N)
moved=""
for _ in $(seq 50); do
  if [ "$(seen 4)" = "origin 127.0.0.7 " ]; then moved=$(date +%s.%N); break; fi
  sleep 0.1
done
if [ -n "$moved" ]; then
  echo "the record changed; all traffic on 127.0.0.7 after $(awk -v a="$changed" -v b="$moved" 'BEGIN { printf "%.2f", b - a }') s"
  awk -v a="$changed" -v b="$moved" 'BEGIN { exit !(b - a <= 2.5) }' || { echo "FAIL: slower than an interval and a TTL" >&2; fail=1; }
else
  echo "FAIL: the traffic did not move to the new address within 5 s" >&2; fail=1
fi
kill $dnsmasq_pid; wait $dnsmasq_pid 2>/dev/null || true
sleep 2
echo "dnsmasq stopped; after 2 s: $(seen 4)"
[ "$(seen 4)" = "origin 127.0.0.7 " ] || { echo "FAIL: the last set did not stay" >&2; fail=1; }
wait $w || true
cat "$dir/wrk.txt"
if grep -qE "Socket errors|Non-2xx" "$dir/wrk.txt"; then
  echo "FAIL: wrk reported errors while the set changed" >&2; fail=1
fi
grep "corelb: DNS" "$dir/corelb.log" || true
[ $fail -eq 0 ] && echo "dns check passed"
exit $fail
