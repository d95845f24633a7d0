#!/usr/bin/env bash
# Side-by-side benchmark: the same scenarios against the origin directly, corelb (as it
# ships, as corelb-poll with --busy-poll 50 and as corelb-splice with --splice), nginx and HAProxy (also as
# haproxy-busypoll, with its busy-polling on), each when installed, with the same worker count, interleaved rounds, medians reported.
# For every run it reads the proxy's own CPU time (user and system, all its processes
# and threads) and context switches from /proc, so the table leads with CPU per
# request: the figure machine noise moves least. Loopback only; every run is bounded
# by its duration.
#
# Three parts:
#   closed loop  wrk -t1 at fixed concurrency: req/s, p50/p99, CPU per request; over
#                TLS too (corelb, nginx and HAProxy terminating TLS with one
#                certificate in front of the same plain origins): keep-alive requests,
#                and new connections per request with full handshakes (wrk) and with
#                resumed ones (oha, whose client resumes TLS 1.3 sessions)
#   open loop    examples/openloop.rs at fixed offered rates (--rates, percent of the
#                slowest proxy's s16_c50 capacity measured in the same run), corrected
#                for coordinated omission: p50, p99, p99.9, max, latency added over direct
#   memory       wrk -t2 -c8000 for 6 s per proxy: RSS before, peak, and 60 s after
#
# Usage: scripts/bench.sh [--origin corelb|nginx] [--rounds N] [--duration SECONDS]
#                         [--workers LIST] [--scenarios LIST] [--targets LIST]
#                         [--rates LIST] [--no-memory] [--baseline REV] [--smoke]
#                         [--corelb PATH]
#   --origin     origins to proxy to: two `corelb backend`s (default) or two nginx
#   --rounds     interleaved rounds, at least 3 for a report (default 5)
#   --duration   seconds per run (default 5)
#   --workers    comma-separated worker counts (default 1)
#   --scenarios  comma-separated subset of: s16_c50 s16_c1000 s16k_c50 s1m_c16 close_c50
#                tls_c50 tls_close_c50 tls_resume_c50
#   --targets    comma-separated subset of: direct corelb corelb-poll corelb-splice nginx haproxy
#                haproxy-busypoll (default all; corelb-base comes with --baseline)
#   --rates      offered rates in percent for the open loop (default 25,50,75; none: skip)
#   --no-memory  skip the 8,000-connection memory part
#   --baseline   also run corelb built from this git revision ("corelb-base"), side by
#                side, to show that a change keeps its ratios (built in a temporary
#                worktree with its own target directory)
#   --smoke      1 round of 1 s, 1 worker, rate 25 only, memory part with 5 s wait:
#                checks the script works, measures nothing
#   --corelb     benchmark this corelb binary (an installed one, /usr/bin/corelb)
#                instead of building target/release/corelb
#
# Needs wrk, curl and openssl (apt-get install -y wrk curl openssl) and python3; nginx, haproxy and gnuplot are used
# when installed (apt-get install -y nginx-light haproxy gnuplot-nox). The open-loop
# generator is this repository's examples/openloop.rs (cargo build --release --example);
# oha, for the resumed-TLS scenario, is built from crates.io into target/bench-tools on
# first use (cargo install).
# Writes results/<date>/: bench.csv, latency.csv, memory.csv (every run), bench.md (the
# tables), machine.txt, and with gnuplot cpu.svg/png and latency.svg/png.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

args="$*"
origin=corelb rounds=5 duration=5 smoke=0 baseline="" base_bin="" base_dir="" corelb_path=""
cores=$(nproc)
workers_list=1
scenarios="s16_c50,s16_c1000,s16k_c50,s1m_c16,close_c50,tls_c50,tls_close_c50,tls_resume_c50"
target_list="direct,corelb,corelb-poll,corelb-splice,nginx,haproxy,haproxy-busypoll"
rates=25,50,75 memory=1 after_wait=60
while [ $# -gt 0 ]; do
  case "$1" in
    --origin) origin="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --workers) workers_list="$2"; shift 2 ;;
    --scenarios) scenarios="$2"; shift 2 ;;
    --targets) target_list="$2"; shift 2 ;;
    --rates) rates="$2"; shift 2 ;;
    --no-memory) memory=0; shift ;;
    --baseline) baseline="$2"; shift 2 ;;
    --smoke) smoke=1; rounds=1; duration=1; workers_list=1; rates=25; after_wait=5; shift ;;
    --corelb) [ $# -ge 2 ] || { echo "bench.sh: --corelb needs a path (see --help)" >&2; exit 2; }
      corelb_path="$2"; shift 2 ;;
    # The comment block at the top, and nothing else.
    -h|--help) sed -n '2,/^[^#]/p' "$root/scripts/bench.sh" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
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
IFS=, read -r -a tlist <<< "$target_list"
for t in "${tlist[@]}"; do
  case "$t" in
    direct|corelb|corelb-poll|corelb-splice|nginx|haproxy|haproxy-busypoll) ;;
    *) echo "bench.sh: unknown target $t (see --help)" >&2; exit 2 ;;
  esac
done
want() { [[ ",$target_list," == *",$1,"* ]]; }
if [ "$rates" = none ]; then rates=""; fi
IFS=, read -r -a rlist <<< "$rates"
for r in "${rlist[@]}"; do
  if ! [[ "$r" =~ ^[0-9]+$ ]] || [ "$r" -lt 1 ] || [ "$r" -gt 100 ]; then
    echo "bench.sh: --rates takes percentages from 1 to 100, not $r" >&2
    exit 2
  fi
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$memory" = 1 ] && [ "$(ulimit -n)" -lt 19000 ]; then
  echo "bench.sh: the memory part needs 19000 open files (ulimit -n is $(ulimit -n)); raise the hard limit or pass --no-memory" >&2
  exit 2
fi

# The open loop: requests at fixed due times, latency counted from when a request was
# due, not from when a busy connection got to send it (coordinated omission), recorded
# into an HdrHistogram. wrk2 does the same but is not packaged; oha (1.14 and 1.16)
# does too but keeps every result in one growing vector, and each doubling of it
# stalls the generator for milliseconds, which decided every target's p99.9 here.
openloop="$root/target/release/examples/openloop"
if [ ${#rlist[@]} -gt 0 ]; then
  cargo build --release --quiet --example openloop
fi
# oha: its TLS client resumes TLS 1.3 sessions, which the tls_resume_c50 scenario needs.
# It builds from crates.io with the toolchain that builds corelb (its default TLS
# features included: it does not build without).
oha_version=1.14.0
oha="$root/target/bench-tools/bin/oha"
if [[ ",$scenarios," == *",tls_resume_c50,"* ]] \
  && ! "$oha" --version 2>/dev/null | grep -q "$oha_version"; then
  echo "building oha $oha_version into target/bench-tools (once) ..."
  cargo install --quiet --locked --version "$oha_version" --root "$root/target/bench-tools" oha
fi

if [ -n "$corelb_path" ]; then
  [ -x "$corelb_path" ] || { echo "bench.sh: --corelb $corelb_path: not an executable file" >&2; exit 2; }
  bin=$(realpath "$corelb_path")
  echo "benchmarking $bin ($("$bin" --version)), not building"
else
  cargo build --release --quiet
  bin="$root/target/release/corelb"
fi
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

# One certificate for every TLS listener: a leaf for localhost and 127.0.0.1
# (ECDSA P-256) signed by a CA made for the run; HAProxy wants chain and key in
# one file.
if [[ ",$scenarios," == *",tls_"* ]]; then
  command -v openssl >/dev/null || { echo "bench.sh: the TLS scenarios need openssl: apt-get install -y openssl" >&2; exit 2; }
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=bench CA" -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout "$work/site.key" -out "$work/site.csr" 2>/dev/null
  printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n" > "$work/ext.cnf"
  openssl x509 -req -in "$work/site.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
    -CAcreateserial -days 2 -extfile "$work/ext.cnf" -out "$work/site.pem" 2>/dev/null
  cat "$work/site.pem" "$work/site.key" > "$work/site-haproxy.pem"
  chmod a+r "$work"/site*
fi

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

# Ports: origins 19001-19002, direct = origin 1; corelb 19100, nginx 19101, haproxy
# 19102, corelb-base 19103, corelb-poll 19104, haproxy-busypoll 19105, corelb-splice 19106.
declare -A port=([corelb]=19100 [nginx]=19101 [haproxy]=19102 [corelb-base]=19103
                 [corelb-poll]=19104 [haproxy-busypoll]=19105 [corelb-splice]=19106)
# The TLS listener of each target that has one: its port + 100 (corelb as it
# ships, nginx and HAProxy only).
declare -A tls_port=([corelb]=19200 [nginx]=19201 [haproxy]=19202 [haproxy-busypoll]=19205)
# The processes whose CPU and memory count for each target (descendants included).
declare -A tpids=()

proxy_pids=()
start_corelb() {
  local name=$1 exe=$2 w=$3; shift 3
  "$exe" serve --backend "$o1" --backend "$o2" --listen "127.0.0.1:${port[$name]}" --workers "$w" "$@" 2>/dev/null &
  proxy_pids+=($!)
  tpids[$name]=$!
  wait_port "127.0.0.1:${port[$name]}"
}

start_haproxy() {
  local name=$1 w=$2 extra=$3
  # HAProxy as documented for a reverse proxy of small and large objects: connection
  # reuse, kernel splicing where it pays (as corelb splices), its default 16 KiB
  # tune.bufsize. maxconn covers the memory part's 8,000 clients; HAProxy wants two
  # descriptors per connection and two per splice pipe, so the pipes are capped to stay
  # within this machine's 20,000 hard limit.
  cat > "$work/$name.cfg" <<CONF
global
  nbthread $w
  maxconn 8500
  maxpipes 1000
  $extra
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
  option splice-auto
frontend f
  bind 127.0.0.1:${port[$name]}
  default_backend origins
$(if [ -f "$work/site-haproxy.pem" ] && [ -n "${tls_port[$name]:-}" ]; then
  printf 'frontend f_tls\n  bind 127.0.0.1:%s ssl crt %s alpn http/1.1\n  default_backend origins\n' \
    "${tls_port[$name]}" "$work/site-haproxy.pem"
fi)
backend origins
  balance roundrobin
  server o1 $o1
  server o2 $o2
CONF
  if ! haproxy -f "$work/$name.cfg" -p "$work/$name.pid" -D 2>"$work/$name.err"; then
    echo "bench.sh: $name did not start:" >&2
    cat "$work/$name.err" >&2
    exit 1
  fi
  wait_port "127.0.0.1:${port[$name]}"
  tpids[$name]=$(cat "$work/$name.pid")
}

start_proxies() {
  local w=$1
  if [ -f "$work/site.pem" ]; then
    want corelb && start_corelb corelb "$bin" "$w" --listen "127.0.0.1:${tls_port[corelb]},tls" \
      --tls-cert "$work/site.pem" --tls-key "$work/site.key"
  else
    want corelb && start_corelb corelb "$bin" "$w"
  fi
  want corelb-poll && start_corelb corelb-poll "$bin" "$w" --busy-poll 50
  want corelb-splice && start_corelb corelb-splice "$bin" "$w" --splice
  [ -n "$base_bin" ] && start_corelb corelb-base "$base_bin" "$w"
  if command -v nginx >/dev/null && want nginx; then
    # nginx as documented for reverse proxying with upstream keep-alive: the idle pool
    # per worker as large as corelb's (1024 per backend, two backends), requests per
    # upstream connection unbounded like the origin's, responses buffered in memory
    # only (16 KiB buffers like HAProxy's, no temporary files).
    cat > "$work/nginx-proxy.conf" <<CONF
worker_processes $w;
worker_rlimit_nofile 19000;
pid $work/nginx-proxy.pid;
error_log $work/nginx-proxy.err;
events { worker_connections 18000; }
http {
  access_log off;
  upstream origins { server $o1; server $o2; keepalive 2048; keepalive_requests 1000000; }
$(if [ -f "$work/site.pem" ]; then
  # TLS as nginx's documentation sets it up for performance: a shared session
  # cache (TLS 1.2 ids) beside its default TLS 1.3 tickets.
  printf '  server {\n    listen 127.0.0.1:%s ssl reuseport;\n    ssl_certificate %s;\n    ssl_certificate_key %s;\n    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_session_cache shared:SSL:10m;\n    keepalive_requests 1000000;\n    location / {\n      proxy_pass http://origins;\n      proxy_http_version 1.1;\n      proxy_set_header Connection "";\n      proxy_buffer_size 16k;\n      proxy_buffers 8 16k;\n      proxy_max_temp_file_size 0;\n    }\n  }\n' \
    "${tls_port[nginx]}" "$work/site.pem" "$work/site.key"
fi)
  server {
    listen 127.0.0.1:${port[nginx]} reuseport;
    keepalive_requests 1000000;
    location / {
      proxy_pass http://origins;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffer_size 16k;
      proxy_buffers 8 16k;
      proxy_max_temp_file_size 0;
    }
  }
}
CONF
    nginx -c "$work/nginx-proxy.conf" -p "$work"
    wait_port "127.0.0.1:${port[nginx]}"
    tpids[nginx]=$(cat "$work/nginx-proxy.pid")
  fi
  if command -v haproxy >/dev/null; then
    want haproxy && start_haproxy haproxy "$w" ""
    want haproxy-busypoll && start_haproxy haproxy-busypoll "$w" "busy-polling"
  fi
  return 0
}

stop_proxies() {
  only all
  for p in "${proxy_pids[@]}"; do kill -INT "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  proxy_pids=()
  [ -f "$work/nginx-proxy.pid" ] && kill -QUIT "$(cat "$work/nginx-proxy.pid")" 2>/dev/null || true
  for h in haproxy haproxy-busypoll; do
    [ -f "$work/$h.pid" ] && kill "$(cat "$work/$h.pid")" 2>/dev/null || true
    rm -f "$work/$h.pid"
  done
  rm -f "$work/nginx-proxy.pid"
  tpids=()
  sleep 0.5
}

# "name address" for every target running, direct first.
targets() {
  want direct && echo "direct $o1"
  for name in corelb corelb-poll corelb-splice corelb-base nginx haproxy haproxy-busypoll; do
    [ -n "${tpids[$name]:-}" ] && echo "$name 127.0.0.1:${port[$name]}"
  done
  true
}

# Only the target measured runs: every other proxy is stopped (SIGSTOP, with its
# children) meanwhile and continued for its own turn. An idle peer may still spin:
# HAProxy's busy-polling polls with a null timeout even without a connection, a whole
# core (measured: 501 ticks in 5 s of 500), which would take one of the two cores from
# every other target. `only all` continues every proxy.
tree_pids() {
  echo "$1"
  local c
  for c in $(pgrep -P "$1"); do tree_pids "$c"; done
}
only() {
  local t sig
  for t in "${!tpids[@]}"; do
    sig=STOP
    if [ "$1" = all ] || [ "$t" = "$1" ]; then sig=CONT; fi
    # shellcheck disable=SC2046
    kill -"$sig" $(tree_pids "${tpids[$t]}") 2>/dev/null || true
  done
}

# "name address" of every running target with a TLS listener.
tls_targets() {
  [ -f "$work/site.pem" ] || return 0
  for name in corelb nginx haproxy haproxy-busypoll; do
    [ -n "${tpids[$name]:-}" ] && echo "$name 127.0.0.1:${tls_port[$name]}"
  done
  true
}

scenario_args() {
  case "$1" in
    s16_c50) echo "50 /size/16" ;;
    s16_c1000) echo "1000 /size/16" ;;
    s16k_c50) echo "50 /size/16384" ;;
    s1m_c16) echo "16 /size/1048576" ;;
    close_c50) echo "50 /size/16 close" ;;
    tls_c50) echo "50 /size/16 tls" ;;
    tls_close_c50) echo "50 /size/16 tls-close" ;;
    tls_resume_c50) echo "50 /size/16 tls-resume" ;;
    *) echo "bench.sh: unknown scenario $1" >&2; exit 2 ;;
  esac
}

report() { python3 "$root/scripts/bench_report.py" "$@"; }

# The target's CPU ticks and context switches ("user sys cs"), or "" for direct.
snap() {
  if [ -n "${tpids[$1]:-}" ]; then report snap "${tpids[$1]}"; else echo "  "; fi
}

# CPU used between two snaps, as CSV fields "user,sys,cs" (empty for direct).
used() {
  local u0 s0 c0 u1 s1 c1
  read -r u0 s0 c0 <<< "$1"
  read -r u1 s1 c1 <<< "$2"
  if [ -z "${u0:-}" ]; then echo ",,"; else echo "$((u1 - u0)),$((s1 - s0)),$((c1 - c0))"; fi
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cores: $cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
  echo "kernel: $(uname -sr)"
  echo "corelb: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$root" diff --quiet 2>/dev/null || echo ' (modified)')"
  [ -n "$baseline" ] && echo "corelb-base: $baseline ($(git -C "$root" rev-parse --short "$baseline"))"
  echo "wrk: $(wrk -v 2>&1 | head -1)"
  [ ${#rlist[@]} -gt 0 ] && echo "open loop: examples/openloop.rs, 50 connections"
  [[ ",$scenarios," == *",tls_resume_c50,"* ]] && echo "oha: $("$oha" --version)"
  command -v nginx >/dev/null && echo "nginx: $(nginx -v 2>&1)"
  command -v haproxy >/dev/null && echo "haproxy: $(haproxy -v 2>&1 | head -1)"
  echo "origin: $origin; rounds: $rounds; duration: ${duration}s; workers: $workers_list; wrk -t1; rates: ${rates:-none}%"
  echo "command: scripts/bench.sh $args"
} > "$out/machine.txt"
cat "$out/machine.txt"

csv="$out/bench.csv" lat="$out/latency.csv" mem="$out/memory.csv"
columns="workers,scenario,target,round,rate,rps,p50_ms,p99_ms,p999_ms,max_ms,errors,requests,user_ticks,sys_ticks,cs"
echo "$columns" > "$csv"
start_origins
IFS=, read -r -a wlist <<< "$workers_list"
IFS=, read -r -a slist <<< "$scenarios"
for w in "${wlist[@]}"; do
  start_proxies "$w"
  # Closed loop: which target goes first rotates with the round.
  for round in $(seq "$rounds"); do
    for s in "${slist[@]}"; do
      read -r conns path close <<< "$(scenario_args "$s")"
      if [[ "${close:-}" == tls* ]]; then mapfile -t tl < <(tls_targets); else mapfile -t tl < <(targets); fi
      n=${#tl[@]}
      for i in $(seq 0 $((n - 1))); do
        read -r name addr <<< "${tl[$(((i + round) % n))]}"
        extra=() scheme=http
        case "${close:-}" in
          close) extra=(-H "Connection: close") ;;
          tls) scheme=https ;;
          tls-close|tls-resume) scheme=https extra=(-H "Connection: close") ;;
        esac
        only "$name"
        before=$(snap "$name")
        if [ "${close:-}" = tls-resume ]; then
          # oha's TLS client (rustls) keeps sessions and resumes them: a new
          # connection per request, each a resumed handshake.
          out_oha=$("$oha" --no-tui --output-format json -z "${duration}s" -c "$conns" --disable-keepalive --wait-ongoing-requests-after-deadline \
                    --insecure --disable-compression "$scheme://$addr$path" 2>/dev/null || true)
          cpu=$(used "$before" "$(snap "$name")")
          IFS=, read -r rps p50 p99 _ _ errors requests <<< "$(report parse-oha 0 <<< "$out_oha")"
        else
          out_wrk=$(wrk -t1 -c"$conns" -d"${duration}s" --latency "${extra[@]}" "$scheme://$addr$path" 2>&1 || true)
          cpu=$(used "$before" "$(snap "$name")")
          IFS=, read -r rps p50 p99 errors requests <<< "$(report parse-wrk <<< "$out_wrk")"
        fi
        echo "$w,$s,$name,$round,,$rps,$p50,$p99,,,$errors,$requests,$cpu" >> "$csv"
        echo "workers=$w round=$round $s $name: $rps req/s, p99 $p99 ms, errors $errors, cpu ticks $cpu"
      done
    done
  done

  # Open loop at fixed rates: a share of the slowest proxy's s16_c50 capacity.
  if [ ${#rlist[@]} -gt 0 ]; then
    [ -f "$lat" ] || echo "$columns,send_lag_p99_ms" > "$lat"
    capacity=$(python3 - "$csv" "$w" <<'PY'
import csv, statistics, sys
runs = {}
for r in csv.DictReader(open(sys.argv[1])):
    if r["workers"] == sys.argv[2] and r["scenario"] == "s16_c50" and r["target"] != "direct":
        runs.setdefault(r["target"], []).append(float(r["rps"]))
print(int(min(statistics.median(v) for v in runs.values())) if runs else 0)
PY
)
    if [ "$capacity" -le 0 ]; then
      # No s16_c50 runs (--scenarios left it out): measure it once per target here.
      capacity=0
      while read -r name addr; do
        [ "$name" = direct ] && continue
        only "$name"
        r=$(wrk -t1 -c50 -d"${duration}s" "http://$addr/size/16" 2>&1 | report parse-wrk | cut -d, -f1)
        if [ "$capacity" = 0 ] || [ "${r%.*}" -lt "$capacity" ]; then capacity=${r%.*}; fi
      done < <(targets)
    fi
    echo "open loop: the slowest proxy's s16_c50 capacity is $capacity req/s"
    for round in $(seq "$rounds"); do
      for pct in "${rlist[@]}"; do
        rate=$((capacity * pct / 100))
        mapfile -t tl < <(targets)
        n=${#tl[@]}
        for i in $(seq 0 $((n - 1))); do
          read -r name addr <<< "${tl[$(((i + round) % n))]}"
          only "$name"
          before=$(snap "$name")
          out_open=$("$openloop" --addr "$addr" --path /size/16 --rate "$rate" --connections 50 \
                     --seconds "$duration" 2>&1 || true)
          cpu=$(used "$before" "$(snap "$name")")
          row=$(report parse-openloop "$rate" <<< "$out_open")
          IFS=, read -r rps p50 p99 p999 maxms errors requests lag <<< "$row"
          echo "$w,rate$pct,$name,$round,$rate,$rps,$p50,$p99,$p999,$maxms,$errors,$requests,$cpu,$lag" >> "$lat"
          echo "workers=$w round=$round rate$pct ($rate/s) $name: p50 $p50 p99 $p99 p99.9 $p999 max $maxms ms, errors $errors (the generator's own send lag p99 $lag ms)"
        done
      done
    done
    # The smoke run measures nothing, but every open-loop run must have been
    # answered in full: this is where the generator itself gets exercised.
    if [ "$smoke" = 1 ] && ! awk -F, 'NR > 1 { rows++; if ($11 != 0) bad = 1 } END { exit (bad || !rows) }' "$lat"; then
      echo "bench.sh: an open-loop run failed or had errors (lines above)" >&2
      exit 1
    fi
  fi

  # Memory: 8,000 active connections per proxy (one worker count only: the first).
  if [ "$memory" = 1 ] && [ "$w" = "${wlist[0]}" ]; then
    echo "target,conns,before_kib,peak_kib,after_kib,after_s,rps,errors" > "$mem"
    declare -A mem_row=()
    while read -r name addr; do
      [ "$name" = direct ] && continue
      pid=${tpids[$name]}
      only "$name"
      before_kib=$(report rss "$pid")
      wrk -t2 -c8000 -d6s "http://$addr/size/16" > "$work/mem-$name.out" 2>&1 &
      wrk_pid=$!
      peak=$before_kib
      while kill -0 "$wrk_pid" 2>/dev/null; do
        now_kib=$(report rss "$pid")
        [ "$now_kib" -gt "$peak" ] && peak=$now_kib
        sleep 0.1
      done
      wait "$wrk_pid" || true
      IFS=, read -r rps _ _ errors _ <<< "$(report parse-wrk < "$work/mem-$name.out")"
      mem_row[$name]="$before_kib,$peak,$rps,$errors"
      echo "memory $name: RSS $before_kib KiB before, peak $peak KiB; $rps req/s, errors $errors"
    done < <(targets)
    # Every proxy runs through the wait: each gives back memory on its own timers.
    only all
    echo "waiting ${after_wait}s after the last burst ..."
    sleep "$after_wait"
    for name in "${!mem_row[@]}"; do
      IFS=, read -r before_kib peak rps errors <<< "${mem_row[$name]}"
      after_kib=$(report rss "${tpids[$name]}")
      echo "$name,8000,$before_kib,$peak,$after_kib,$after_wait,$rps,$errors" >> "$mem"
      echo "memory $name: ${after_wait}s after: $after_kib KiB"
    done
  fi
  stop_proxies
done

report report "$out"
echo "results in $out"
