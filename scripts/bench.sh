#!/usr/bin/env bash
# Side-by-side benchmark: the same wrk scenarios against the origin directly, corelb,
# nginx and HAProxy (each when installed), with the same worker count, interleaved
# rounds, medians reported. Loopback only; every run is bounded by its duration.
#
# Usage: scripts/bench.sh [--origin corelb|nginx] [--rounds N] [--duration SECONDS]
#                         [--workers LIST] [--scenarios LIST] [--baseline REV] [--smoke]
#   --origin     origins to proxy to: two `corelb backend`s (default) or two nginx
#   --rounds     interleaved rounds, at least 3 for a report (default 3)
#   --duration   seconds per wrk run (default 5)
#   --workers    comma-separated worker counts (default "1,<all cores>")
#   --scenarios  comma-separated subset of: s16_c50 s16_c1000 s16k_c50 s1m_c16 close_c50
#   --baseline   also run corelb built from this git revision ("corelb-base"), side by
#                side, to show that a change keeps its ratios (built in a temporary
#                worktree with its own target directory)
#   --smoke      1 round of 1 s, 1 worker: checks the script works, measures nothing
#
# Needs wrk and curl (apt-get install -y wrk curl) and python3; nginx, haproxy and gnuplot are used
# when installed (apt-get install -y nginx-light haproxy gnuplot-nox).
# Writes results/<date>/: bench.csv (every run), bench.md (the table), machine.txt,
# and bench.svg (with gnuplot).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

origin=corelb rounds=3 duration=5 smoke=0 baseline="" base_bin="" base_dir=""
cores=$(nproc)
workers_list="1,${cores}"
scenarios="s16_c50,s16_c1000,s16k_c50,s1m_c16,close_c50"
while [ $# -gt 0 ]; do
  case "$1" in
    --origin) origin="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --workers) workers_list="$2"; shift 2 ;;
    --scenarios) scenarios="$2"; shift 2 ;;
    --baseline) baseline="$2"; shift 2 ;;
    --smoke) smoke=1; rounds=1; duration=1; workers_list=1; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$origin" in corelb|nginx) ;; *) echo "bench.sh: --origin must be corelb or nginx" >&2; exit 2 ;; esac
if ! command -v wrk >/dev/null; then
  echo "bench.sh: wrk is not installed; install it with: apt-get update && apt-get install -y wrk" >&2
  exit 2
fi
if ! command -v python3 >/dev/null; then
  echo "bench.sh: python3 is needed for the report; install it with: apt-get install -y python3" >&2
  exit 2
fi
if [ "$origin" = nginx ] && ! command -v nginx >/dev/null; then
  echo "bench.sh: --origin nginx needs nginx: apt-get install -y nginx-light" >&2
  exit 2
fi
if [ "$smoke" = 0 ] && [ "$rounds" -lt 3 ]; then
  echo "bench.sh: at least 3 rounds are needed for medians" >&2
  exit 2
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build --release --quiet
bin="$root/target/release/corelb"
out="$root/results/$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$out"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "$base_dir" ] && git -C "$root" worktree remove --force "$base_dir" 2>/dev/null || true
  [ -f "$work/nginx-origin.pid" ] && kill "$(cat "$work/nginx-origin.pid")" 2>/dev/null || true
  stop_proxies
  rm -rf "$work"
}
trap cleanup EXIT

if [ -n "$baseline" ]; then
  if ! git -C "$root" rev-parse --verify --quiet "$baseline^{commit}" >/dev/null; then
    echo "bench.sh: --baseline $baseline is not a git revision here" >&2
    exit 2
  fi
  base_dir="$work/base"
  git -C "$root" worktree add --detach --quiet "$base_dir" "$baseline"
  echo "building the baseline $baseline ..."
  (cd "$base_dir" && CARGO_TARGET_DIR="$work/base-target" cargo build --release --quiet)
  base_bin="$work/base-target/release/corelb"
fi

# Ports: origins 19001-19002, direct = origin 1, corelb 19100, nginx 19101, haproxy 19102,
# corelb-base 19103.
o1=127.0.0.1:19001 o2=127.0.0.1:19002

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "bench.sh: nothing listens on $1" >&2
  exit 1
}

start_origins() {
  if [ "$origin" = corelb ]; then
    "$bin" backend --listen "$o1" 2>/dev/null & pids+=($!)
    "$bin" backend --listen "$o2" 2>/dev/null & pids+=($!)
  else
    mkdir -p "$work/www/size"
    for n in 16 16384 1048576; do head -c "$n" /dev/zero | tr '\0' 'x' > "$work/www/size/$n"; done
    # nginx's workers run unprivileged: they must be able to enter mktemp's 0700 dir.
    chmod -R a+rX "$work"
    cat > "$work/nginx-origin.conf" <<CONF
worker_processes 1;
pid $work/nginx-origin.pid;
error_log $work/nginx-origin.err;
events { worker_connections 8192; }
http {
  access_log off;
  default_type text/plain;
  keepalive_requests 1000000;
  server { listen $o1; root $work/www; }
  server { listen $o2; root $work/www; }
}
CONF
    nginx -c "$work/nginx-origin.conf" -p "$work"
  fi
  wait_port "$o1"; wait_port "$o2"
  # A benchmark of error pages measures nothing: every origin must serve every size.
  for o in "$o1" "$o2"; do
    for n in 16 16384 1048576; do
      got=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "http://$o/size/$n")
      if [ "$got" != "200 $n" ]; then
        echo "bench.sh: origin $o answered /size/$n with '$got' (status, bytes), not '200 $n'" >&2
        exit 1
      fi
    done
  done
}

proxy_pids=()
start_proxies() {
  local w=$1
  "$bin" serve --backend "$o1" --backend "$o2" --listen 127.0.0.1:19100 --workers "$w" 2>/dev/null &
  proxy_pids+=($!)
  wait_port 127.0.0.1:19100
  if [ -n "$base_bin" ]; then
    "$base_bin" serve --backend "$o1" --backend "$o2" --listen 127.0.0.1:19103 --workers "$w" 2>/dev/null &
    proxy_pids+=($!)
    wait_port 127.0.0.1:19103
  fi
  if command -v nginx >/dev/null; then
    cat > "$work/nginx-proxy.conf" <<CONF
worker_processes $w;
worker_rlimit_nofile 20000;
pid $work/nginx-proxy.pid;
error_log $work/nginx-proxy.err;
events { worker_connections 8192; }
http {
  access_log off;
  upstream origins { server $o1; server $o2; keepalive 256; }
  server {
    listen 127.0.0.1:19101 reuseport;
    location / { proxy_pass http://origins; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
    nginx -c "$work/nginx-proxy.conf" -p "$work"
    wait_port 127.0.0.1:19101
  fi
  if command -v haproxy >/dev/null; then
    cat > "$work/haproxy.cfg" <<CONF
global
  nbthread $w
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend f
  bind 127.0.0.1:19102
  default_backend origins
backend origins
  balance roundrobin
  server o1 $o1
  server o2 $o2
CONF
    haproxy -f "$work/haproxy.cfg" -p "$work/haproxy.pid" -D 2>"$work/haproxy.err"
    wait_port 127.0.0.1:19102
  fi
}

stop_proxies() {
  for p in "${proxy_pids[@]}"; do kill -INT "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  proxy_pids=()
  [ -f "$work/nginx-proxy.pid" ] && kill -QUIT "$(cat "$work/nginx-proxy.pid")" 2>/dev/null || true
  [ -f "$work/haproxy.pid" ] && kill "$(cat "$work/haproxy.pid")" 2>/dev/null || true
  rm -f "$work/nginx-proxy.pid" "$work/haproxy.pid"
  sleep 0.5
}

targets() {
  echo "direct $o1"
  echo "corelb 127.0.0.1:19100"
  [ -n "$base_bin" ] && echo "corelb-base 127.0.0.1:19103"
  command -v nginx >/dev/null && echo "nginx 127.0.0.1:19101"
  command -v haproxy >/dev/null && echo "haproxy 127.0.0.1:19102"
  true
}

scenario_args() {
  case "$1" in
    s16_c50) echo "50 /size/16" ;;
    s16_c1000) echo "1000 /size/16" ;;
    s16k_c50) echo "50 /size/16384" ;;
    s1m_c16) echo "16 /size/1048576" ;;
    close_c50) echo "50 /size/16 close" ;;
    *) echo "bench.sh: unknown scenario $1" >&2; exit 2 ;;
  esac
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cores: $cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
  echo "kernel: $(uname -sr)"
  echo "corelb: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$root" diff --quiet 2>/dev/null || echo ' (modified)')"
  [ -n "$baseline" ] && echo "corelb-base: $baseline ($(git -C "$root" rev-parse --short "$baseline"))"
  echo "wrk: $(wrk -v 2>&1 | head -1)"
  command -v nginx >/dev/null && echo "nginx: $(nginx -v 2>&1)"
  command -v haproxy >/dev/null && echo "haproxy: $(haproxy -v 2>&1 | head -1)"
  echo "origin: $origin; rounds: $rounds; duration: ${duration}s; workers: $workers_list; wrk -t1"
} > "$out/machine.txt"
cat "$out/machine.txt"

csv="$out/bench.csv"
echo "workers,scenario,target,round,rps,p50_ms,p99_ms,errors" > "$csv"
start_origins
IFS=, read -r -a wlist <<< "$workers_list"
IFS=, read -r -a slist <<< "$scenarios"
for w in "${wlist[@]}"; do
  start_proxies "$w"
  for round in $(seq "$rounds"); do
    for s in "${slist[@]}"; do
      read -r conns path close <<< "$(scenario_args "$s")"
      while read -r name addr; do
        extra=()
        [ "${close:-}" = close ] && extra=(-H "Connection: close")
        report=$(wrk -t1 -c"$conns" -d"${duration}s" --latency "${extra[@]}" "http://$addr$path" 2>&1 || true)
        row=$(python3 "$root/scripts/bench_report.py" parse-wrk <<< "$report")
        echo "$w,$s,$name,$round,$row" >> "$csv"
        echo "workers=$w round=$round $s $name: $row"
      done < <(targets)
    done
  done
  stop_proxies
done

python3 "$root/scripts/bench_report.py" report "$csv" "$out"
echo "results in $out"
