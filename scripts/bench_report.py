#!/usr/bin/env python3
"""Helpers of scripts/bench.sh.

parse-wrk            read `wrk --latency` output on stdin, print
                     "rps,p50_ms,p99_ms,errors,requests"
parse-oha RATE       read `oha --output-format json` on stdin, print
                     "rps,p50_ms,p99_ms,p999_ms,max_ms,errors,requests"
parse-openloop RATE  read examples/openloop.rs's JSON line on stdin, print
                     "rps,p50_ms,p99_ms,p999_ms,max_ms,errors,requests,send_lag_p99_ms"
snap PID...          the CPU ticks (user, system) and context switches of these
                     processes, their threads and every descendant: "user sys cs"
rss PID...           resident KiB of these processes and their descendants
report OUTDIR        medians per (workers, scenario, target) from OUTDIR/bench.csv,
                     latency.csv and memory.csv: prints the tables, writes
                     OUTDIR/bench.md and, with gnuplot, cpu.svg/png and latency.svg/png
"""
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from collections import defaultdict

# corelb and its variants are compared with the best of the peers; the peers are
# nginx and HAProxy, each also in its busy-polling variant where there is one.
OURS = ["corelb", "corelb-poll", "corelb-splice", "corelb-base"]
PEERS = ["nginx", "haproxy", "haproxy-busypoll"]
TARGETS = ["direct"] + OURS + PEERS
TICK = os.sysconf("SC_CLK_TCK")
UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def to_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")


def parse_wrk(text):
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    requests = re.search(r"(\d+) requests in", text)
    if not rps or not requests:
        # wrk could not run at all (nothing listening, ...): count it as failed.
        return "0,nan,nan,-1,0"
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        errors += sum(int(g) for g in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non2xx:
        errors += int(non2xx.group(1))
    return "%.0f,%.3f,%.3f,%d,%d" % (
        float(rps.group(1)),
        to_ms(p50.group(1)) if p50 else float("nan"),
        to_ms(p99.group(1)) if p99 else float("nan"),
        errors,
        int(requests.group(1)),
    )


def parse_oha(text, rate):
    """oha's JSON summary: latencies are in seconds; every status but 200 and every
    error counts as an error. A run that did not reach 95% of its offered rate is
    flagged as an error too: its latencies would describe a different load."""
    try:
        d = json.loads(text)
    except ValueError:
        return "0,nan,nan,nan,nan,-1,0"
    codes = d.get("statusCodeDistribution", {})
    ok = int(codes.get("200", 0))
    bad = sum(int(v) for k, v in codes.items() if k != "200")
    bad += sum(int(v) for v in d.get("errorDistribution", {}).values())
    summary = d.get("summary", {})
    total = float(summary.get("total") or 0)
    rps = ok / total if total > 0 else 0.0
    if rps < 0.95 * rate:
        bad = max(bad, 1)
    pct = d.get("latencyPercentiles", {})

    def ms(key):
        v = pct.get(key)
        return v * 1000.0 if isinstance(v, (int, float)) else float("nan")

    slowest = summary.get("slowest")
    return "%.0f,%.3f,%.3f,%.3f,%.3f,%d,%d" % (
        rps, ms("p50"), ms("p99"), ms("p99.9"),
        slowest * 1000.0 if isinstance(slowest, (int, float)) else float("nan"),
        bad, ok,
    )


def parse_openloop(text, rate):
    """examples/openloop.rs's JSON line: latencies in ms. Errors, requests left
    unanswered and a run that did not reach 95% of its offered rate all count as
    errors, as does a run it cut short (a million requests owed at once); output
    that is not its JSON (it failed) is a run with an error."""
    d = None
    for line in text.splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
    if not isinstance(d, dict):
        return "0,nan,nan,nan,nan,-1,0,nan"
    ok = int(d.get("ok", 0))
    bad = int(d.get("errors", 0)) + int(d.get("unanswered", 0))
    rps = float(d.get("rps", 0.0))
    if rps < 0.95 * rate or d.get("cut_short"):
        bad = max(bad, 1)
    return "%.0f,%.3f,%.3f,%.3f,%.3f,%d,%d,%.3f" % (
        rps, d.get("p50_ms", float("nan")), d.get("p99_ms", float("nan")),
        d.get("p99_9_ms", float("nan")), d.get("max_ms", float("nan")), bad, ok,
        d.get("send_lag_p99_ms", float("nan")),
    )


def tree(pids):
    """The processes given and all their descendants (nginx's workers, say)."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    found = set(p for p in pids if p in parent)
    grew = True
    while grew:
        more = {p for p, pp in parent.items() if pp in found and p not in found}
        found |= more
        grew = bool(more)
    return sorted(found)


def snap(pids):
    """User and system ticks (threads that ended included) and context switches
    (voluntary and not, summed over the threads alive now)."""
    user = system = switches = 0
    for pid in tree(pids):
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
            for task in os.listdir("/proc/%d/task" % pid):
                with open("/proc/%d/task/%s/status" % (pid, task)) as f:
                    for line in f:
                        if "ctxt_switches:" in line:
                            switches += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
    return "%d %d %d" % (user, system, switches)


def rss(pids):
    total = 0
    for pid in tree(pids):
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return total


def fmt_ratio(x):
    return "%.2f×" % x if x == x and x > 0 else "–"


def median(rows, field):
    vals = [float(r[field]) for r in rows if r.get(field) not in (None, "")]
    vals = [v for v in vals if v == v]
    return statistics.median(vals) if vals else float("nan")


def summarise(csv_path):
    """Medians per (workers, scenario, target) over rounds, in first-seen order."""
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
        per_req = []
        for r in rows:
            n = int(r["requests"])
            if n > 0 and r["user_ticks"] != "":
                user = int(r["user_ticks"]) / TICK * 1e6 / n
                system = int(r["sys_ticks"]) / TICK * 1e6 / n
                per_req.append((user + system, user, system, int(r["cs"]) / n))
        # The round whose total CPU per request is the median gives all four
        # figures, so user + system adds up to the total shown.
        per_req.sort()
        cpu = per_req[len(per_req) // 2] if per_req else (float("nan"),) * 4
        med[key] = {
            "rps": median(rows, "rps"),
            "rate": median(rows, "rate") if "rate" in rows[0] else float("nan"),
            "p50": median(rows, "p50_ms"),
            "p99": median(rows, "p99_ms"),
            "p999": median(rows, "p999_ms"),
            "max": median(rows, "max_ms"),
            "lag": median(rows, "send_lag_p99_ms") if "send_lag_p99_ms" in rows[0] else float("nan"),
            "errors": -1 if -1 in errors else sum(errors),
            "rounds": len(rows),
            "cpu": cpu[0],
            "user": cpu[1],
            "sys": cpu[2],
            "cs": cpu[3],
        }
    return med, order


def best_peer(med, workers, scenario, field):
    vals = [med[(workers, scenario, p)][field] for p in PEERS if (workers, scenario, p) in med]
    vals = [v for v in vals if v == v and v > 0]
    return vals


def fmt(x, spec="%.2f"):
    return spec % x if x == x else "–"


def cpu_table(med, order):
    lines = [
        "| workers | scenario | target | CPU µs/req | user | sys | vs best peer | ctx sw/req | req/s | vs best peer | p50 ms | p99 ms | errors |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for workers, scenario in order:
        rows = [(t, med[(workers, scenario, t)]) for t in TARGETS if (workers, scenario, t) in med]
        rows.sort(key=lambda tm: (tm[0] != "direct", tm[1]["cpu"] if tm[1]["cpu"] == tm[1]["cpu"] else 0))
        cpu_peers = best_peer(med, workers, scenario, "cpu")
        rps_peers = best_peer(med, workers, scenario, "rps")
        for target, m in rows:
            ours = target in OURS
            vs_cpu = m["cpu"] / min(cpu_peers) if ours and cpu_peers else float("nan")
            vs_rps = m["rps"] / max(rps_peers) if ours and rps_peers else float("nan")
            errors = "failed" if m["errors"] < 0 else str(m["errors"])
            lines.append(
                "| %d | %s | %s | %s | %s | %s | %s | %s | %.0f | %s | %.2f | %.2f | %s |"
                % (workers, scenario, target, fmt(m["cpu"], "%.1f"), fmt(m["user"], "%.1f"),
                   fmt(m["sys"], "%.1f"), fmt_ratio(vs_cpu), fmt(m["cs"]), m["rps"], fmt_ratio(vs_rps),
                   m["p50"], m["p99"], errors)
            )
    return lines


def latency_table(med, order):
    lines = [
        "| workers | offered | target | req/s | p50 ms | p99 ms | p99.9 ms | max ms | added p50 / p99 ms | CPU µs/req | generator's send lag p99 ms | errors |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for workers, scenario in order:
        direct = med.get((workers, scenario, "direct"))
        for target in TARGETS:
            m = med.get((workers, scenario, target))
            if not m:
                continue
            added = "–"
            if direct and target != "direct":
                added = "%.3f / %.3f" % (m["p50"] - direct["p50"], m["p99"] - direct["p99"])
            errors = "failed" if m["errors"] < 0 else str(m["errors"])
            lines.append(
                "| %d | %s (%.0f/s) | %s | %.0f | %.3f | %.3f | %.3f | %.2f | %s | %s | %s | %s |"
                % (workers, scenario, m["rate"], target, m["rps"], m["p50"], m["p99"], m["p999"], m["max"],
                   added, fmt(m["cpu"], "%.1f"), fmt(m["lag"], "%.3f"), errors)
            )
    return lines


def memory_table(mem_csv):
    lines = [
        "| target | connections | RSS before KiB | peak KiB | KB per connection | after KiB (s after the burst) | after / before | req/s | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with open(mem_csv) as f:
        rows = list(csv.DictReader(f))
    rows.sort(key=lambda r: TARGETS.index(r["target"]) if r["target"] in TARGETS else len(TARGETS))
    for r in rows:
        before, peak, after, n = int(r["before_kib"]), int(r["peak_kib"]), int(r["after_kib"]), int(r["conns"])
        lines.append(
            "| %s | %d | %d | %d | %.1f | %d (%s) | %s | %s | %s |"
            % (r["target"], n, before, peak, (peak - before) * 1.024 / n, after, r["after_s"],
               fmt_ratio(after / before if before else float("nan")), r["rps"], r["errors"])
        )
    return lines


def report(outdir):
    sections = []
    with open(outdir + "/machine.txt") as f:
        sections.append("```\n" + f.read() + "```")
    closed = outdir + "/bench.csv"
    med, order = summarise(closed)
    sections.append("### CPU per request, closed loop (wrk), medians of rounds\n\n" + "\n".join(cpu_table(med, order)))
    all_med = dict(med)
    opened = outdir + "/latency.csv"
    lat_order = []
    if os.path.exists(opened):
        lat, lat_order = summarise(opened)
        all_med.update(lat)
        sections.append("### Latency at a fixed offered rate (open loop, examples/openloop.rs, corrected for coordinated omission), medians of rounds\n\n"
                        + "\n".join(latency_table(lat, lat_order)))
    mem = outdir + "/memory.csv"
    if os.path.exists(mem):
        sections.append("### Memory with 8,000 active connections (wrk -t2 -c8000)\n\n" + "\n".join(memory_table(mem)))
    bad = ["%s/%s/w%d" % (k[2], k[1], k[0]) for k, m in sorted(all_med.items()) if m["errors"] != 0]
    if bad:
        sections.append("**WARNING: errors or failed runs in: %s. Those figures do not measure the proxy.**" % ", ".join(bad))
    text = "\n\n".join(sections) + "\n"
    with open(outdir + "/bench.md", "w") as f:
        f.write(text)
    print(text)
    charts(med, order, all_med, lat_order, outdir)


def gnuplot(outdir, name, script):
    for terminal, ext in [("svg size 1100,520 dynamic background '#ffffff'", "svg"), ("pngcairo size 1100,520", "png")]:
        head = "set terminal %s\nset output '%s/%s.%s'\n" % (terminal, outdir, name, ext)
        subprocess.run(["gnuplot"], input=(head + script).encode(), check=True)


def bars(data, columns, title, ylabel, extra=""):
    return """
set title '{title}'
set ylabel '{ylabel}'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set key outside right top
set termoption noenhanced
set grid ytics
set xtics rotate by -30
{extra}
plot {plots}
""".format(title=title, ylabel=ylabel, extra=extra,
           plots=", ".join("'%s' using %d:xtic(1) title columnheader(%d)" % (data, i + 2, i + 2) for i in range(columns)))


def charts(med, order, all_med, lat_order, outdir):
    """cpu.{svg,png}: CPU per request per target and scenario; latency.{svg,png}:
    p50, p99 and p99.9 per target at each offered rate."""
    if not shutil.which("gnuplot"):
        print("(gnuplot not installed: no charts; apt-get install -y gnuplot-nox)")
        return
    present = [t for t in TARGETS[1:] if any((w, s, t) in med for w, s in order)]
    # Each scenario's figures over the best peer's in it, so that a 16-byte request
    # and a 1 MiB one read on one scale (the tables give the microseconds); without
    # a peer in the run, the microseconds themselves.
    relative = all(best_peer(med, w, s, "cpu") for w, s in order)
    data = outdir + "/cpu.dat"
    with open(data, "w") as f:
        f.write("group " + " ".join(present) + "\n")
        for workers, scenario in order:
            base = min(best_peer(med, workers, scenario, "cpu")) if relative else 1.0
            vals = [med.get((workers, scenario, t), {}).get("cpu", float("nan")) / base for t in present]
            f.write("%s/w%d %s\n" % (scenario, workers, " ".join("%.3f" % v if v == v else "NaN" for v in vals)))
    if relative:
        gnuplot(outdir, "cpu", bars(data, len(present),
                                    "proxy CPU time per request over the best peer (nginx, HAProxy) in each scenario; lower is better",
                                    "x the best peer (median of rounds)",
                                    "set yrange [0:*]\nset arrow from graph 0, first 1 to graph 1, first 1 nohead lw 2 dt 2\n"
                                    "set arrow from graph 0, first 0.8 to graph 1, first 0.8 nohead lw 1 dt 3\n"))
    else:
        gnuplot(outdir, "cpu", bars(data, len(present), "proxy CPU time per request (user + system), median of rounds; lower is better",
                                    "µs per request", "set yrange [0:*]"))
    charts_made = ["cpu"]
    if lat_order:
        lpresent = [t for t in TARGETS if any((w, s, t) in all_med for w, s in lat_order)]
        data = outdir + "/latency.dat"
        with open(data, "w") as f:
            f.write("group " + " ".join(lpresent) + "\n")
            for workers, scenario in lat_order:
                for pct, field in [("p50", "p50"), ("p99", "p99"), ("p99.9", "p999")]:
                    vals = [all_med.get((workers, scenario, t), {}).get(field, float("nan")) for t in lpresent]
                    f.write("%s-%s/w%d %s\n" % (scenario, pct, workers, " ".join("%.4f" % v if v == v else "NaN" for v in vals)))
        gnuplot(outdir, "latency", bars(data, len(lpresent), "latency at a fixed offered rate (open loop, corrected for coordinated omission), median of rounds",
                                        "ms (log scale)", "set logscale y"))
        charts_made.append("latency")
    print("charts: " + ", ".join("%s/%s.svg and .png" % (outdir, c) for c in charts_made))


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "parse-wrk":
        print(parse_wrk(sys.stdin.read()))
    elif len(sys.argv) == 3 and sys.argv[1] == "parse-oha":
        print(parse_oha(sys.stdin.read(), float(sys.argv[2])))
    elif len(sys.argv) == 3 and sys.argv[1] == "parse-openloop":
        print(parse_openloop(sys.stdin.read(), float(sys.argv[2])))
    elif len(sys.argv) >= 3 and sys.argv[1] in ("snap", "rss"):
        pids = [int(p) for p in sys.argv[2:]]
        print(snap(pids) if sys.argv[1] == "snap" else rss(pids))
    elif len(sys.argv) == 3 and sys.argv[1] == "report":
        report(sys.argv[2])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
