#!/usr/bin/env python3
"""Resident memory per idle keep-alive client connection, side by side.

Starts one `corelb backend` origin and, in front of it with 1 worker each, corelb
(and nginx and HAProxy when installed). For each proxy: opens N connections (default
5000), sends one request on each and reads the response, then leaves them idle, and
reports (RSS with N idle connections - RSS before) / N. Loopback only; it stops by
itself and closes everything.

Usage: scripts/idle_memory.py [N]      (run `cargo build --release` first)
"""
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from loopback import stop, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "corelb")
ORIGIN = ("127.0.0.1", 19301)
REQUEST = b"GET /size/16 HTTP/1.1\r\nHost: idle\r\n\r\n"


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def children(pid):
    """A process and its children (nginx and haproxy fork their workers)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [pid] + [int(p) for p in out.split()]


def open_idle(addr, n):
    conns = []
    for _ in range(n):
        s = socket.create_connection(addr, timeout=10)
        s.sendall(REQUEST)
        got = b""
        while not got.endswith(b"abcdefghijklmnop"):
            chunk = s.recv(4096)
            if not chunk:
                sys.exit("idle_memory: connection closed by the proxy")
            got += chunk
        conns.append(s)
    return conns


def measure(name, addr, pids_of, n):
    wait_port(addr, "idle_memory")
    # One connection first, so the worker's one-off allocations are in the baseline.
    for s in open_idle(addr, 1):
        s.close()
    time.sleep(0.3)
    pids = pids_of()
    before = rss_kib(pids)
    conns = open_idle(addr, n)
    time.sleep(0.5)
    after = rss_kib(pids)
    for s in conns:
        s.close()
    per = (after - before) * 1024 / n / 1000
    print("%-8s RSS %6d KiB -> %6d KiB with %d idle connections: %.2f KB per connection" % (name, before, after, n, per))
    return per


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < n + 100:
        sys.exit("idle_memory: the open files limit (%d) is too low for %d connections" % (hard, n))
    if not os.path.exists(BIN):
        sys.exit("idle_memory: build first: cargo build --release")
    work = tempfile.mkdtemp()
    procs = []
    try:
        procs.append(subprocess.Popen([BIN, "backend", "--listen", "%s:%d" % ORIGIN], stderr=subprocess.DEVNULL))
        wait_port(ORIGIN, "idle_memory")
        corelb = subprocess.Popen([BIN, "serve", "--backend", "%s:%d" % ORIGIN, "--listen", "127.0.0.1:19310", "--workers", "1"], stderr=subprocess.DEVNULL)
        procs.append(corelb)
        measure("corelb", ("127.0.0.1", 19310), lambda: [corelb.pid], n)
        if shutil.which("nginx"):
            conf = os.path.join(work, "nginx.conf")
            with open(conf, "w") as f:
                f.write(
                    "worker_processes 1; worker_rlimit_nofile %d; pid %s/nginx.pid; error_log %s/nginx.err;\n"
                    "events { worker_connections %d; }\n"
                    "http { access_log off; keepalive_timeout 120s; upstream o { server %s:%d; keepalive 64; }\n"
                    "  server { listen 127.0.0.1:19311; location / { proxy_pass http://o; proxy_http_version 1.1;"
                    " proxy_set_header Connection \"\"; } } }\n" % (n + 1000, work, work, n + 1000, ORIGIN[0], ORIGIN[1])
                )
            master = subprocess.Popen(["nginx", "-c", conf, "-p", work, "-g", "daemon off;"], stderr=subprocess.DEVNULL)
            procs.append(master)
            wait_port(("127.0.0.1", 19311), "idle_memory")
            measure("nginx", ("127.0.0.1", 19311), lambda: children(master.pid)[1:], n)
        if shutil.which("haproxy"):
            cfg = os.path.join(work, "haproxy.cfg")
            with open(cfg, "w") as f:
                f.write(
                    "global\n  nbthread 1\n  maxconn %d\n"
                    "defaults\n  mode http\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n"
                    "  http-reuse always\n"
                    "frontend f\n  bind 127.0.0.1:19312\n  default_backend o\n"
                    "backend o\n  server o1 %s:%d\n" % (n + 1000, ORIGIN[0], ORIGIN[1])
                )
            hap = subprocess.Popen(["haproxy", "-f", cfg], stderr=subprocess.DEVNULL)
            procs.append(hap)
            measure("haproxy", ("127.0.0.1", 19312), lambda: children(hap.pid), n)
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
