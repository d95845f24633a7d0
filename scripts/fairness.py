#!/usr/bin/env python3
"""Fairness between clients of one worker: does one client streaming at full speed
starve light ones?

Starts one `corelb backend` origin and, in front of it with 1 worker each, corelb
(and a baseline corelb binary with --baseline, and nginx and HAProxy when
installed). For each proxy and each scenario, 20 light keep-alive clients make a
GET every 5 ms for a few seconds while one heavy client runs:

  none      nobody else (the unloaded figure)
  download  GET of an endless body, read as fast as possible
  upload    POST of an endless chunked body, sent as fast as possible
  tunnel-up    a WebSocket session to the origin's /ws?sink, sending 64 KiB
               frames as fast as possible
  tunnel-down  a WebSocket session to /ws?source, read as fast as possible
  tunnel-echo  a WebSocket session to the /ws echo, sending 16 KiB frames and
               reading the echoes (both directions at once: on 2 cores this
               saturates the machine, so it measures the scheduler as much as
               the proxy)

and prints, per proxy and scenario, the light clients' answered requests, p50,
p99 and max latency, p99 over the unloaded p99, and the heavy client's MB/s (a
proxy that slows the stream down spares the light clients). The heavy client runs in its
own process. Loopback only; everything stops by itself.

Usage: scripts/fairness.py [--seconds S] [--baseline PATH] [--only corelb]
                           [--heavy download,upload,...]
       (run `cargo build --release` first; nginx and haproxy from Debian's packages)
"""
import argparse
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from loopback import stop, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "corelb")
ORIGIN = ("127.0.0.1", 19501)
LIGHT = 20
INTERVAL = 0.005
NICE_HEAVY = 10
SCENARIOS = ["none", "download", "upload", "tunnel-up", "tunnel-down", "tunnel-echo"]


def response_end(buf):
    """Length of the first whole Content-Length response in buf, or None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    length = 0
    for line in buf[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    total = end + 4 + length
    return total if len(buf) >= total else None


def light_clients(addr, seconds):
    """LIGHT keep-alive clients in one thread (no GIL hand-offs to skew the
    figures), each sending a GET every INTERVAL and timing its answer. A late
    answer delays that client's next request (closed loop on a schedule)."""
    sel = selectors.DefaultSelector()
    clients = []
    for _ in range(LIGHT):
        s = socket.create_connection(addr, timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        c = {"sock": s, "buf": b"", "sent": None, "next": time.monotonic()}
        sel.register(s, selectors.EVENT_READ, c)
        clients.append(c)
    latencies, errors = [], 0
    end = time.monotonic() + seconds
    while True:
        now = time.monotonic()
        if now >= end:
            break
        for c in clients:
            if c["sent"] is None and c["next"] <= now:
                try:
                    c["sock"].send(b"GET / HTTP/1.1\r\nHost: light\r\n\r\n")
                except OSError:
                    errors += 1
                    c["next"] = float("inf")
                    continue
                c["sent"] = now
        waiting = [c["next"] for c in clients if c["sent"] is None]
        timeout = max(0.0, min(waiting + [end]) - time.monotonic())
        for key, _ in sel.select(timeout):
            c = key.data
            try:
                chunk = c["sock"].recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                errors += 1
                sel.unregister(c["sock"])
                c["sent"], c["next"] = None, float("inf")
                continue
            c["buf"] += chunk
            n = response_end(c["buf"])
            if n is not None and c["sent"] is not None:
                done = time.monotonic()
                latencies.append(done - c["sent"])
                c["buf"] = c["buf"][n:]
                c["next"] = max(c["next"] + INTERVAL, done)
                c["sent"] = None
    for c in clients:
        c["sock"].close()
    return latencies, errors


def heavy(kind, host, port, seconds):
    """The heavy client (run in its own process)."""
    s = socket.create_connection((host, port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    end = time.monotonic() + seconds
    block = b"x" * 65536
    moved = [0]

    def take():
        n = len(s.recv(262144))
        moved[0] += n
        return n

    def send(data):
        s.sendall(data)
        moved[0] += len(data)

    if kind == "download":
        s.sendall(b"GET /size/1000000000000 HTTP/1.1\r\nHost: heavy\r\n\r\n")
        while time.monotonic() < end:
            if not take():
                break
    elif kind == "upload":
        s.sendall(b"POST / HTTP/1.1\r\nHost: heavy\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n" % len(block) + block + b"\r\n"
        while time.monotonic() < end:
            send(chunk)
    elif kind.startswith("tunnel-"):
        mode = {"tunnel-up": "?sink", "tunnel-down": "?source", "tunnel-echo": ""}[kind]
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        s.sendall(
            ("GET /ws%s HTTP/1.1\r\nHost: heavy\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (mode, key)).encode()
        )
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(4096)
        if not got.startswith(b"HTTP/1.1 101"):
            sys.exit("fairness: no WebSocket switch: %r" % got[:100])
        if kind == "tunnel-down":
            while time.monotonic() < end:
                if not take():
                    break
        else:
            # Binary frames, masked with a zero key (so the payload is as is).
            size = 65535 if kind == "tunnel-up" else 16384
            payload = block[:size]
            frame = bytes([0x82, 0xFE]) + size.to_bytes(2, "big") + b"\0\0\0\0" + payload
            done = threading.Event()

            def drain():
                while not done.is_set():
                    try:
                        if not s.recv(262144):
                            return
                    except OSError:
                        return

            if kind == "tunnel-echo":
                threading.Thread(target=drain, daemon=True).start()
            while time.monotonic() < end:
                send(frame * 4)
            done.set()
    s.close()
    # Bytes per second the heavy client moved (its own direction), for the parent.
    print(moved[0] / seconds, flush=True)


def run_scenario(addr, kind, seconds):
    proc = None
    if kind != "none":
        # It runs for exactly the light clients' time plus the warm-up.
        proc = subprocess.Popen(
            [sys.executable, __file__, "--heavy-child", kind, addr[0], str(addr[1]), str(seconds + 0.5)],
            stdout=subprocess.PIPE,
            text=True,
            # On a machine this small the heavy client's own CPU (a Python loop
            # copying GB/s) would starve the light clients' process whatever the
            # proxy does; at a lower priority it still runs at full speed when
            # the CPU is there, and the figure measures the proxy.
            preexec_fn=(lambda: os.nice(NICE_HEAVY)) if NICE_HEAVY else None,
        )
        time.sleep(0.5)  # let the stream reach full speed
    latencies, errors = light_clients(addr, seconds)
    rate = 0.0
    if proc:
        out, _ = proc.communicate(timeout=30)
        rate = float(out.strip() or 0)
    latencies.sort()

    def pct(p):
        return latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000 if latencies else float("nan")

    return len(latencies), errors, pct(0.5), pct(0.99), latencies[-1] * 1000 if latencies else float("nan"), rate


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--heavy-child":
        heavy(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--baseline", help="another corelb binary to run beside this one")
    ap.add_argument("--baseline-args", default="", help="flags for the baseline binary, as one string (say --splice)")
    ap.add_argument("--only", help="run only this proxy (corelb, baseline, nginx, haproxy)")
    ap.add_argument("--heavy", dest="kinds", help="comma-separated scenarios to run besides none (default: all)")
    ap.add_argument("--no-nice", action="store_true", help="run the heavy client at normal priority")
    args = ap.parse_args()
    if args.no_nice:
        global NICE_HEAVY
        NICE_HEAVY = 0
    if not os.path.exists(BIN):
        sys.exit("fairness: build first: cargo build --release")
    work = tempfile.mkdtemp()
    procs = []
    proxies = []
    try:
        procs.append(subprocess.Popen([BIN, "backend", "--listen", "%s:%d" % ORIGIN, "--workers", "2"], stderr=subprocess.DEVNULL))
        wait_port(ORIGIN, "fairness")
        backend = "%s:%d" % ORIGIN
        proxies.append(("corelb", [BIN, "serve", "--backend", backend, "--listen", "127.0.0.1:19510", "--workers", "1"], 19510))
        if args.baseline:
            proxies.append(("baseline", [args.baseline, "serve", "--backend", backend, "--listen", "127.0.0.1:19511", "--workers", "1"] + args.baseline_args.split(), 19511))
        if shutil.which("nginx"):
            conf = os.path.join(work, "nginx.conf")
            with open(conf, "w") as f:
                f.write(
                    "worker_processes 1; pid %s/nginx.pid; error_log %s/nginx.err;\n"
                    "events { worker_connections 4096; }\n"
                    "http { access_log off; client_max_body_size 0;\n"
                    "  map $http_upgrade $conn { default upgrade; '' ''; }\n"
                    "  upstream o { server %s; keepalive 64; }\n"
                    "  server { listen 127.0.0.1:19512; location / { proxy_pass http://o; proxy_http_version 1.1;"
                    " proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection $conn;"
                    " proxy_buffering off; proxy_request_buffering off; proxy_read_timeout 60s; } } }\n"
                    % (work, work, backend)
                )
            proxies.append(("nginx", ["nginx", "-c", conf, "-p", work, "-g", "daemon off;"], 19512))
        if shutil.which("haproxy"):
            cfg = os.path.join(work, "haproxy.cfg")
            with open(cfg, "w") as f:
                f.write(
                    "global\n  nbthread 1\n"
                    "defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n"
                    "  timeout tunnel 60s\n  http-reuse always\n"
                    "frontend f\n  bind 127.0.0.1:19513\n  default_backend o\n"
                    "backend o\n  server o1 %s\n" % backend
                )
            proxies.append(("haproxy", ["haproxy", "-f", cfg], 19513))
        if args.only:
            proxies = [p for p in proxies if p[0] == args.only]
        print("%-9s %-12s %8s %6s %8s %8s %8s %10s %9s" % ("proxy", "heavy", "answers", "errors", "p50 ms", "p99 ms", "max ms", "p99/idle", "heavy MB/s"))
        for name, cmd, port in proxies:
            p = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
            procs.append(p)
            addr = ("127.0.0.1", port)
            wait_port(addr, "fairness")
            idle_p99 = None
            kinds = SCENARIOS if not args.kinds else ["none"] + args.kinds.split(",")
            for kind in kinds:
                n, errs, p50, p99, mx, rate = run_scenario(addr, kind, args.seconds)
                if kind == "none":
                    idle_p99 = p99
                print("%-9s %-12s %8d %6d %8.2f %8.2f %8.1f %9.1fx %9.0f" % (name, kind, n, errs, p50, p99, mx, p99 / idle_p99, rate / 1e6), flush=True)
            p.terminate()
            p.wait(timeout=10)
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
