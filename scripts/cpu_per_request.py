#!/usr/bin/env python3
"""Proxy CPU time per request: the figure machine noise moves least.

Starts two `corelb backend` origins and, in front of them with 1 worker each,
corelb (target/release) and, with --baseline, another corelb binary beside it.
For each scenario and round (rounds interleaved, so both builds see the same
machine, and which goes first alternating), runs wrk against each proxy and reads the proxy's user and system time
from /proc/PID/stat before and after; prints the medians of user+system
microseconds per request, and the ratio new / baseline. Loopback only; every run
is bounded by its duration.

Scenarios (wrk -t1): s16_c50 (16-byte body, 50 connections), s16k_c50 (16 KiB),
s1m_c16 (1 MiB), close_c50 (16 bytes, Connection: close).

Usage: scripts/cpu_per_request.py [--baseline PATH] [--rounds N] [--seconds S]
                                  [--scenarios s16_c50,...]
                                  [--args="--splice"] [--baseline-args="..."]
       (--baseline-args without --baseline runs the same binary twice, to
       compare two settings)
       scripts/cpu_per_request.py --proxy-protocol [--scenarios close_c50,...]
       (HAProxy in mode tcp in front of both: corelb on a ,proxy-protocol
       listener gets a v2 header per connection, the baseline, the same binary,
       none: what reading the header costs; needs haproxy)
       (run `cargo build --release` first; wrk from Debian's packages)
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

from loopback import stop, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "corelb")
ORIGINS = [("127.0.0.1", 19701), ("127.0.0.1", 19702)]
SCENARIOS = {
    "s16_c50": ("/size/16", 50, []),
    "s16k_c50": ("/size/16384", 50, []),
    "s1m_c16": ("/size/1048576", 16, []),
    "close_c50": ("/size/16", 50, ["-H", "Connection: close"]),
}
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat (1-based), 12 and 13 here.
    return (int(fields[11]) + int(fields[12])) / TICK


def wrk(port, path, conns, extra, seconds):
    out = subprocess.run(
        ["wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds] + extra + ["http://127.0.0.1:%d%s" % (port, path)],
        capture_output=True, text=True, timeout=seconds + 30,
    ).stdout
    m = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if not m:
        sys.exit("cpu_per_request: wrk said: " + out)
    return int(m.group(1)), errors.group(0) if errors else ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--args", default="", help="extra arguments for corelb serve")
    ap.add_argument("--baseline-args", default=None, help="extra arguments for the baseline")
    ap.add_argument("--proxy-protocol", action="store_true",
                    help="HAProxy (mode tcp) in front; corelb reads a PROXY v2 header per connection")
    args = ap.parse_args()
    if args.proxy_protocol:
        if not shutil.which("haproxy"):
            sys.exit("cpu_per_request: haproxy is missing: apt-get install -y haproxy")
        args.baseline_args = args.baseline_args or ""
    if not shutil.which("wrk"):
        sys.exit("cpu_per_request: wrk is missing: apt-get install -y wrk")
    if not os.path.exists(BIN):
        sys.exit("cpu_per_request: build first: cargo build --release")
    backends = []
    for addr in ORIGINS:
        backends += ["--backend", "%s:%d" % addr]
    builds = [("corelb", BIN, 19710, args.args.split())]
    if args.baseline or args.baseline_args is not None:
        builds.append(("baseline", args.baseline or BIN, 19711, (args.baseline_args or "").split()))
    procs = []
    try:
        for addr in ORIGINS:
            procs.append(subprocess.Popen([BIN, "backend", "--listen", "%s:%d" % addr], stderr=subprocess.DEVNULL))
            wait_port(addr, "cpu_per_request")
        pids = {}
        fronts = []
        for name, path, port, extra in builds:
            listen = "127.0.0.1:%d" % port
            if args.proxy_protocol and name == "corelb":
                listen += ",proxy-protocol"
                extra = extra + ["--proxy-protocol-from", "127.0.0.1"]
            p = subprocess.Popen([path, "serve", "--listen", listen, "--workers", "1"] + backends + extra,
                                 stderr=subprocess.DEVNULL)
            procs.append(p)
            wait_port(("127.0.0.1", port), "cpu_per_request")
            target = port
            if args.proxy_protocol:
                # HAProxy's port for this build: 100 above its own.
                target = port + 100
                send = " send-proxy-v2" if name == "corelb" else ""
                fronts.append("listen %s\n  bind 127.0.0.1:%d\n  server s 127.0.0.1:%d%s\n" % (name, target, port, send))
            pids[name] = (p.pid, target)
        if fronts:
            cfg = "/tmp/cpu_per_request-haproxy.cfg"
            with open(cfg, "w") as f:
                f.write("global\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 2s\n"
                        "  timeout client 30s\n  timeout server 30s\n" + "".join(fronts))
            procs.append(subprocess.Popen(["haproxy", "-db", "-f", cfg], stderr=subprocess.DEVNULL))
            for _, (_, target) in pids.items():
                wait_port(("127.0.0.1", target), "cpu_per_request (haproxy)")
        results = {}
        for r in range(args.rounds):
            for scenario in args.scenarios.split(","):
                path, conns, extra = SCENARIOS[scenario]
                # Alternate which build goes first, so neither always meets the
                # machine as the other left it.
                order = builds if r % 2 == 0 else list(reversed(builds))
                for name, _, _, _ in order:
                    pid, port = pids[name]
                    before = cpu_seconds(pid)
                    n, errors = wrk(port, path, conns, extra, args.seconds)
                    used = cpu_seconds(pid) - before
                    results.setdefault((scenario, name), []).append(used / n * 1e6)
                    print("round %d %-9s %-8s %8d requests  %6.2f us CPU per request %s"
                          % (r + 1, scenario, name, n, used / n * 1e6, errors), flush=True)
        print()
        print("%-9s %-8s %s" % ("scenario", "build", "median us CPU/request (all rounds)"))
        for scenario in args.scenarios.split(","):
            line = []
            for name, _, _, _ in builds:
                v = results[(scenario, name)]
                line.append(statistics.median(v))
                print("%-9s %-8s %6.2f  (%s)" % (scenario, name, statistics.median(v), ", ".join("%.2f" % x for x in v)))
            if len(line) == 2:
                print("%-9s ratio    %.3f" % (scenario, line[0] / line[1]))
    finally:
        stop(procs)


if __name__ == "__main__":
    main()
