"""Helpers the benchmark scripts share: wait for a loopback port, stop processes.

Imported by scripts/idle_memory.py, scripts/fairness.py and
scripts/cpu_per_request.py (Python puts a script's own folder on its path).
"""
import socket
import subprocess
import sys
import time


def wait_port(addr, who, timeout=10.0):
    """Wait until something accepts connections on addr; else exit naming `who`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(addr, timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit("%s: nothing listens on %s:%d" % ((who,) + tuple(addr)))


def stop(procs):
    """Terminate processes, newest first; kill those that do not stop in 10 s."""
    for p in reversed(procs):
        if p.poll() is not None:
            continue
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
