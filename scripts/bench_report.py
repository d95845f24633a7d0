#!/usr/bin/env python3
"""Helpers of scripts/bench.sh.

parse-wrk            read `wrk --latency` output on stdin, print "rps,p50_ms,p99_ms,errors"
report CSV OUTDIR    medians per (workers, scenario, target) from bench.csv: prints the
                     markdown table, writes OUTDIR/bench.md and, with gnuplot, bench.svg
"""
import csv
import re
import shutil
import statistics
import subprocess
import sys
from collections import defaultdict

PROXIES = ["corelb", "nginx", "haproxy"]
# corelb built from an older revision (bench.sh --baseline): compared with the same
# peers as corelb, and never a peer itself.
BASELINE = "corelb-base"
TARGETS = ["direct", "corelb", BASELINE, "nginx", "haproxy"]
UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def to_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")


def parse_wrk(text):
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not rps:
        # wrk could not run at all (nothing listening, ...): count it as failed.
        return "0,nan,nan,-1"
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        errors += sum(int(g) for g in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non2xx:
        errors += int(non2xx.group(1))
    return "%.0f,%.3f,%.3f,%d" % (
        float(rps.group(1)),
        to_ms(p50.group(1)) if p50 else float("nan"),
        to_ms(p99.group(1)) if p99 else float("nan"),
        errors,
    )


def fmt_ratio(x):
    return "%.2f×" % x if x == x and x > 0 else "–"


def report(csv_path, outdir):
    runs = defaultdict(list)
    order = []
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            key = (int(row["workers"]), row["scenario"], row["target"])
            if key[:2] not in order:
                order.append(key[:2])
            runs[key].append(row)
    med = {}
    for key, rows in runs.items():
        errors = [int(r["errors"]) for r in rows]
        med[key] = {
            "rps": statistics.median(float(r["rps"]) for r in rows),
            "p50": statistics.median(float(r["p50_ms"]) for r in rows),
            "p99": statistics.median(float(r["p99_ms"]) for r in rows),
            "errors": -1 if -1 in errors else sum(errors),
            "rounds": len(rows),
        }
    lines = [
        "| workers | scenario | target | req/s (median) | p50 ms | p99 ms | errors | vs better peer | vs direct |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for workers, scenario in order:
        direct = med.get((workers, scenario, "direct"), {}).get("rps", float("nan"))
        for target in TARGETS:
            m = med.get((workers, scenario, target))
            if not m:
                continue
            own = "corelb" if target == BASELINE else target
            peers = [med[(workers, scenario, p)]["rps"] for p in PROXIES if p != own and (workers, scenario, p) in med]
            vs_peer = m["rps"] / max(peers) if target != "direct" and peers and max(peers) > 0 else float("nan")
            vs_direct = m["rps"] / direct if target != "direct" and direct > 0 else float("nan")
            errors = "failed" if m["errors"] < 0 else str(m["errors"])
            lines.append(
                "| %d | %s | %s | %.0f | %.2f | %.2f | %s | %s | %s |"
                % (workers, scenario, target, m["rps"], m["p50"], m["p99"], errors, fmt_ratio(vs_peer), fmt_ratio(vs_direct))
            )
    bad = ["%s/%s/w%d" % (k[2], k[1], k[0]) for k, m in sorted(med.items()) if m["errors"] != 0]
    if bad:
        lines.append("")
        lines.append("**WARNING: errors or failed runs in: %s. Those figures do not measure the proxy.**" % ", ".join(bad))
    table = "\n".join(lines)
    with open(outdir + "/machine.txt") as f:
        machine = f.read()
    with open(outdir + "/bench.md", "w") as f:
        f.write("```\n" + machine + "```\n\n" + table + "\n")
    print(table)
    chart(med, order, outdir)


def chart(med, order, outdir):
    """Grouped bars of req/s relative to direct, one group per (workers, scenario)."""
    if not shutil.which("gnuplot"):
        print("(gnuplot not installed: no chart; apt-get install -y gnuplot-nox)")
        return
    present = [t for t in TARGETS[1:] if any((w, s, t) in med for w, s in order)]
    data = outdir + "/bench.dat"
    with open(data, "w") as f:
        f.write("group " + " ".join(present) + "\n")
        for workers, scenario in order:
            direct = med.get((workers, scenario, "direct"), {}).get("rps", 0)
            vals = []
            for t in present:
                rps = med.get((workers, scenario, t), {}).get("rps", 0)
                vals.append("%.3f" % (rps / direct if direct else 0))
            f.write("%s/w%d %s\n" % (scenario, workers, " ".join(vals)))
    script = """
set title 'req/s relative to direct (wrk -> origin), median of rounds'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set key outside right top
set termoption noenhanced
set yrange [0:*]
set grid ytics
set xtics rotate by -30
plot {plots}
""".format(
        plots=", ".join("'%s' using %d:xtic(1) title columnheader(%d)" % (data, i + 2, i + 2) for i in range(len(present))),
    )
    for terminal, name in [("svg size 1000,500 dynamic background '#ffffff'", "bench.svg"), ("pngcairo size 1000,500", "bench.png")]:
        head = "set terminal %s\nset output '%s/%s'\n" % (terminal, outdir, name)
        subprocess.run(["gnuplot"], input=(head + script).encode(), check=True)
    print("chart: %s/bench.svg and bench.png" % outdir)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "parse-wrk":
        print(parse_wrk(sys.stdin.read()))
    elif len(sys.argv) == 4 and sys.argv[1] == "report":
        report(sys.argv[2], sys.argv[3])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
