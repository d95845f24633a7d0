#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: a figure that
# machine noise does not move, for comparing two versions of the hot path.
#
# Runs `corelb serve --workers 1` under callgrind in front of a native origin, sends
# N keep-alive requests (default 20000) over one connection (with --close: each on a
# new connection, with `Connection: close`), and prints user-space
# instructions per request (startup excluded: counting starts after 1000 warm-up
# requests) and the top functions. Busy polling is off: under valgrind the worker
# would spend its time in empty polls, which are not per-request work. Loopback only.
#
# Usage: scripts/instructions.sh [--close] [N]   (needs valgrind: apt-get install -y valgrind)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=keep-alive
if [ "${1:-}" = --close ]; then mode=close; shift; fi
n="${1:-20000}"
command -v valgrind >/dev/null || { echo "instructions.sh: apt-get install -y valgrind" >&2; exit 2; }
cargo build --release --quiet
bin=${CARGO_TARGET_DIR:-target}/release/corelb
work=$(mktemp -d)
"$bin" backend --listen 127.0.0.1:19401 2>/dev/null &
origin=$!
valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" --instr-atstart=no \
  "$bin" serve --backend 127.0.0.1:19401 --listen 127.0.0.1:19402 --workers 1 --busy-poll 0 2>"$work/vg.log" &
proxy=$!
trap 'kill $origin 2>/dev/null; kill -INT $proxy 2>/dev/null; rm -rf "$work"' EXIT
python3 - "$n" "$proxy" "$mode" <<'PY'
import socket, subprocess, sys, time
n, pid, close = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "close"
deadline = time.time() + 60
while True:
    try:
        s = socket.create_connection(("127.0.0.1", 19402), timeout=30)
        break
    except OSError:
        if time.time() > deadline:
            sys.exit("instructions.sh: the proxy did not start")
        time.sleep(0.2)
req = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: wrk\r\nAccept: */*\r\n"
req += b"Connection: close\r\n\r\n" if close else b"\r\n"
def one():
    global s
    if close:
        s.close()
        s = socket.create_connection(("127.0.0.1", 19402), timeout=30)
    s.sendall(req)
    got = b""
    while not got.endswith(b"\n") or b"\r\n\r\n" not in got:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("instructions.sh: connection closed")
        got += chunk
    if close:
        # The whole response, up to the proxy's close.
        while s.recv(4096):
            pass
for _ in range(1000):
    one()
subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
for _ in range(n):
    one()
subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
PY
kill -INT $proxy; wait $proxy || true
total=$(callgrind_annotate "$work/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
echo "instructions per request: $(( total / n )) (user space, $n requests, $mode, 1 worker)"
callgrind_annotate "$work/cg.out" 2>/dev/null | grep -E "^ *[0-9,]+ \(" | head -15
# CALLGRIND_OUT=FILE keeps the profile (for callgrind_annotate --auto=yes with line tables).
if [ -n "${CALLGRIND_OUT:-}" ]; then cp "$work/cg.out" "$CALLGRIND_OUT"; fi
