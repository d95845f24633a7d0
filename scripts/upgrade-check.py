#!/usr/bin/env python3
"""The systemd binary-upgrade sequence under wrk, with this script playing
systemd's part (this machine has no systemd as PID 1).

corelb serves with the shipped scripts/corelb.toml (127.0.0.1:8080, admin on
127.0.0.1:9900, backends 127.0.0.1:9001 and :9002, started here) and
--handover, under a notify socket as systemd's NOTIFY_SOCKET. For each of two
wrk loads (-c50 keep-alive, -c10 Connection: close), SIGUSR2 goes to the main
process two seconds in, as `systemctl kill --signal=SIGUSR2 --kill-whom=main`
sends it; the successor must send MAINPID and READY=1, and the old process
must exit by itself. At the end SIGTERM must bring STOPPING=1. Passes when wrk
reports no socket error and no non-2xx response. Loopback only; about 20 s;
stops by itself.

Usage: scripts/upgrade-check.py [BASE_PORT [BINARY]]
       BASE_PORT: listen on it, admin on +1, backends on +2 and +3, over the
       example config's (CI passes one, so a stray listener on 8080 does not
       fail it); BINARY defaults to target/release/corelb.
       needs wrk: apt-get install -y wrk
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def expect(sock, what, timeout=10.0):
    """The next notify message that contains `what`."""
    sock.settimeout(timeout)
    while True:
        msg = sock.recv(4096).decode()
        if what in msg:
            return msg


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wrk_counts(text):
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    socket_errors = sum(int(g) for g in errors.groups()) if errors else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    requests = re.search(r"(\d+) requests in", text)
    return int(requests.group(1)) if requests else 0, socket_errors, int(non2xx.group(1)) if non2xx else 0


def main():
    base = int(sys.argv[1]) if len(sys.argv) > 1 else None
    binary = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "target/release/corelb")
    listen, ports = (8080, (9001, 9002)) if base is None else (base, (base + 2, base + 3))
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="corelb-upgrade-")
    notify_path = os.path.join(tmp, "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    env = dict(os.environ, NOTIFY_SOCKET=notify_path)
    backends = [
        subprocess.Popen([binary, "backend", "--listen", f"127.0.0.1:{p}"], stderr=subprocess.DEVNULL)
        for p in ports
    ]
    log = open(os.path.join(tmp, "corelb.log"), "w")
    serve = [binary, "serve", "--config", os.path.join(ROOT, "scripts/corelb.toml"),
             "--handover", os.path.join(tmp, "handover.sock")]
    if base is not None:
        serve += ["--listen", f"127.0.0.1:{base}", "--admin", f"127.0.0.1:{base + 1}",
                  "--backend", f"127.0.0.1:{ports[0]}", "--backend", f"127.0.0.1:{ports[1]}"]
    main_proc = subprocess.Popen(serve, env=env, stderr=log)
    main_pid = main_proc.pid
    failed = False
    try:
        expect(notify, "READY=1")
        print(f"READY=1 from pid {main_pid}")
        for name, extra in (("-c50 keep-alive", ["-c50"]), ("-c10 Connection: close", ["-c10", "-H", "Connection: close"])):
            wrk = subprocess.Popen(["wrk", "-t2", "-d6s", *extra, f"http://127.0.0.1:{listen}/"],
                                   stdout=subprocess.PIPE, text=True)
            time.sleep(2)
            os.kill(main_pid, signal.SIGUSR2)
            msg = expect(notify, "MAINPID=")
            new_pid = int(re.search(r"MAINPID=(\d+)", msg).group(1))
            ready = "READY=1" in msg
            deadline = time.time() + 40
            while alive(main_pid) and time.time() < deadline:
                time.sleep(0.05)
            old_gone = not alive(main_pid)
            out, _ = wrk.communicate(timeout=30)
            requests, socket_errors, non2xx = wrk_counts(out)
            ok = ready and old_gone and new_pid != main_pid and requests > 0 and socket_errors == 0 and non2xx == 0
            failed |= not ok
            print(f"{name}: SIGUSR2 to {main_pid}; MAINPID={new_pid} READY={ready}; old exited: {old_gone}; "
                  f"wrk: {requests} requests, {socket_errors} socket errors, {non2xx} non-2xx: {'ok' if ok else 'FAIL'}")
            main_pid = new_pid
        os.kill(main_pid, signal.SIGTERM)
        expect(notify, "STOPPING=1")
        deadline = time.time() + 40
        while alive(main_pid) and time.time() < deadline:
            time.sleep(0.05)
        print(f"SIGTERM to {main_pid}: STOPPING=1, exited: {not alive(main_pid)}")
        failed |= alive(main_pid)
    except Exception as e:  # a missing notification, a wrk that hangs
        print(f"FAIL: {e!r}; see {log.name}")
        failed = True
    finally:
        for pid in {main_pid, main_proc.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for b in backends:
            b.terminate()
            b.wait()
        main_proc.wait()
    if not failed:
        shutil.rmtree(tmp, ignore_errors=True)
    print("upgrade check:", "FAIL" if failed else "ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
