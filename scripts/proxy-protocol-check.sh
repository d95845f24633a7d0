#!/usr/bin/env bash
# Scale-out check: HAProxy in mode tcp as the L4 balancer in front of two corelb
# instances, passing each client's address with the PROXY protocol (v2 on one
# port, v1 on the other). Under two wrk loads (keep-alive through v2, a new
# connection per request through v1), one corelb is killed (SIGKILL) midway:
# HAProxy's checks take it out, and the errors are bounded by the connections
# that were on it. Before and after, a client at 127.0.0.3 must be the
# X-Forwarded-For the origin sees. Loopback only; about 15 s; stops by itself.
#
# Usage: scripts/proxy-protocol-check.sh [BASE_PORT]   (default 18400; uses BASE_PORT..+6)
#        needs haproxy, wrk and curl: apt-get install haproxy wrk curl
set -euo pipefail
cd "$(dirname "$0")/.."
base="${1:-18400}"
v2=$base; v1=$((base + 1)); lb_a=$((base + 2)); lb_b=$((base + 3))
origin_a=$((base + 4)); origin_b=$((base + 5)); admin=$((base + 6))
for tool in haproxy wrk curl; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed: apt-get install -y $tool" >&2; exit 2; }
done

cargo build --release --quiet
bin=./target/release/corelb
dir=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
trap "exit 1" INT TERM

for port in $origin_a $origin_b; do
  $bin backend --listen "127.0.0.1:$port" 2>"$dir/origin-$port.log" &
  pids+=($!)
done
start_lb() {  # start_lb PORT [ADMIN]: a corelb that takes PROXY headers from HAProxy (127.0.0.1) only
  local extra=()
  [ $# -gt 1 ] && extra=(--admin "127.0.0.1:$2")
  $bin serve --listen "127.0.0.1:$1,proxy-protocol" --proxy-protocol-from 127.0.0.1 --workers 1 \
    --backend "127.0.0.1:$origin_a" --backend "127.0.0.1:$origin_b" "${extra[@]}" 2>"$dir/corelb-$1.log" &
}
start_lb $lb_a; victim=$!; pids+=($victim)
start_lb $lb_b $admin; pids+=($!)

cat >"$dir/haproxy.cfg" <<EOF
global
  maxconn 2000
defaults
  mode tcp
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  retries 3
  option redispatch
listen v2
  bind 127.0.0.1:$v2
  balance roundrobin
  server a 127.0.0.1:$lb_a send-proxy-v2 check check-send-proxy inter 200ms fall 2 rise 2
  server b 127.0.0.1:$lb_b send-proxy-v2 check check-send-proxy inter 200ms fall 2 rise 2
listen v1
  bind 127.0.0.1:$v1
  balance roundrobin
  server a 127.0.0.1:$lb_a send-proxy check check-send-proxy inter 200ms fall 2 rise 2
  server b 127.0.0.1:$lb_b send-proxy check check-send-proxy inter 200ms fall 2 rise 2
EOF
haproxy -c -q -f "$dir/haproxy.cfg"
haproxy -db -f "$dir/haproxy.cfg" 2>"$dir/haproxy.log" &
pids+=($!)
for port in $v2 $v1 $lb_a $lb_b; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null && break
    # A corelb port refuses a request without a PROXY header: a connect is enough.
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done

fail=0
xff() {  # xff PORT: the X-Forwarded-For the origin saw for a client at 127.0.0.3
  curl -s --interface 127.0.0.3 "http://127.0.0.1:$1/echo" | tr -d '\r' | sed -n 's/^[Xx]-[Ff]orwarded-[Ff]or: //p'
}
for port in $v2 $v1; do
  got=$(xff $port)
  echo "client 127.0.0.3 through HAProxy port $port: the origin saw X-Forwarded-For: $got"
  [ "$got" = "127.0.0.3" ] || { echo "FAIL: expected 127.0.0.3" >&2; fail=1; }
done

wrk -t1 -c50 -d10s "http://127.0.0.1:$v2/" >"$dir/wrk-keepalive.txt" &
w1=$!
wrk -t1 -c10 -d10s -H 'Connection: close' "http://127.0.0.1:$v1/" >"$dir/wrk-close.txt" &
w2=$!
sleep 4
echo "killing the corelb on port $lb_a (SIGKILL) under load"
{ kill -KILL $victim && wait $victim; } 2>/dev/null || true
wait $w1 $w2 || true
cat "$dir/wrk-keepalive.txt" "$dir/wrk-close.txt"

errors() {  # errors FILE: socket errors (all kinds) plus non-2xx responses wrk counted
  local f=$1 n=0
  n=$(sed -n 's/.*Socket errors: connect \([0-9]*\), read \([0-9]*\), write \([0-9]*\), timeout \([0-9]*\).*/\1 \2 \3 \4/p' "$f" | awk '{print $1+$2+$3+$4}')
  echo $(( ${n:-0} + $(sed -n 's/.*Non-2xx or 3xx responses: \([0-9]*\).*/\1/p' "$f" | awk '{s+=$1} END {print s+0}') ))
}
ka=$(errors "$dir/wrk-keepalive.txt"); cl=$(errors "$dir/wrk-close.txt")
requests=$(sed -n 's/ *\([0-9]*\) requests in.*/\1/p' "$dir/wrk-keepalive.txt" "$dir/wrk-close.txt" | awk '{s+=$1} END {print s}')
echo "requests: $requests; errors: keep-alive $ka (bound 50: the connections open), close $cl (bound 10)"
[ "$ka" -le 50 ] || { echo "FAIL: more keep-alive errors than connections" >&2; fail=1; }
[ "$cl" -le 10 ] || { echo "FAIL: more errors than connections on the close load" >&2; fail=1; }
[ "${requests:-0}" -gt 1000 ] || { echo "FAIL: too few requests" >&2; fail=1; }
for port in $v2 $v1; do
  got=$(xff $port)
  echo "after the kill, through port $port: X-Forwarded-For: $got"
  [ "$got" = "127.0.0.3" ] || { echo "FAIL: expected 127.0.0.3 from the survivor" >&2; fail=1; }
done
curl -s "http://127.0.0.1:$admin/metrics" | grep -E '^corelb_proxy_header' | grep -v ' 0$' || true
[ $fail -eq 0 ] && echo "proxy protocol check passed"
exit $fail
