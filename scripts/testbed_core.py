"""Process plumbing shared by the test bed components (see testbed.py).

A component is a plain dict (it is stored in DIR/state.json):
  kind, name, dir (its data/work dir), port, cmd, logs (first one gets stdout+stderr),
  optional init (one-off command before the first start), user (run as), pid, start_time.
"""
import contextlib
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

READY_TIMEOUT = 120  # seconds, per component
STOP_TIMEOUT = 15  # seconds from SIGTERM to SIGKILL
ABORT = threading.Event()  # set on Ctrl-C: wait_ready() gives up at once


class TestbedError(Exception):
    pass


def log(msg):
    print(f"test bed: {msg}", file=sys.stderr, flush=True)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def as_user(user):
    """Popen kwargs to run as `user` (we are root and postgres refuses to run as root)."""
    return {"user": user, "group": user, "extra_groups": []} if user else {}


def run(cmd, what, timeout=READY_TIMEOUT, **kw):
    """Run a short command; on failure raise with its output."""
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise TestbedError(f"{what} did not finish within {timeout} s: {shlex.join(cmd)}") from None
    if p.returncode != 0:
        raise TestbedError(f"{what} failed (exit {p.returncode}): {shlex.join(cmd)}\n{p.stdout[-3000:]}")
    return p.stdout


def free_port(taken):
    """A random free loopback port BELOW the kernel's ephemeral port range.

    Ports from bind(port 0) come from the ephemeral range, which outgoing client
    connections also draw from; while a component is stopped (`node stop`), such a
    connection could take its port and the restart would fail."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_lo = int(f.read().split()[0])
    hi = ephemeral_lo - 1 if ephemeral_lo > 12000 else 65535
    for _ in range(1000):
        port = random.randint(10000, hi)
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise TestbedError("no free port found")


def proc_start_time(pid):
    """Kernel start time of a live (non-zombie) pid, None if it is gone.
    (pid, start time) identifies a process even after pid reuse."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def alive(comp):
    pid = comp.get("pid")
    return bool(pid) and proc_start_time(pid) == comp.get("start_time")


def tail(comp, lines=40):
    out = []
    for path in comp["logs"]:
        with contextlib.suppress(OSError), open(path, errors="replace") as f:
            out.append(f"--- tail of {path} ---\n" + "".join(f.readlines()[-lines:]))
    return "\n".join(out) or "(no log output)"


def spawn(comp):
    """Start comp["cmd"] in its own session (so terminal signals and the caller's
    exit do not reach it), output appended to its first log file."""
    with open(comp["logs"][0], "ab") as out:
        p = subprocess.Popen(comp["cmd"], cwd=comp["dir"], stdin=subprocess.DEVNULL,
                             stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                             **as_user(comp.get("user")))
    comp["pid"], comp["start_time"] = p.pid, proc_start_time(p.pid)


def wait_ready(comp, probe, timeout=READY_TIMEOUT):
    """Poll probe(comp) until it returns true; fail early if the process dies."""
    deadline, last = time.monotonic() + timeout, None
    while True:
        if ABORT.is_set():
            raise TestbedError("interrupted")
        if not alive(comp):
            raise TestbedError(f"{comp['name']} exited during startup\n{tail(comp)}")
        try:
            if probe(comp):
                return
        except Exception as e:  # connection refused, protocol errors, ...: not ready yet
            last = e
        if time.monotonic() > deadline:
            raise TestbedError(f"{comp['name']} not ready after {timeout} s (port {comp['port']}, "
                               f"last probe error: {last!r})\n{tail(comp)}")
        time.sleep(0.2)


def stop(comp, sig=signal.SIGTERM, hard=False):
    """Send `sig`, wait up to STOP_TIMEOUT, then SIGKILL the whole process group.
    hard=True: SIGKILL right away.  Returns once the group is gone (and reaped)."""
    if not alive(comp):
        comp["pid"] = None
        return
    pid = comp["pid"]
    if not hard:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + STOP_TIMEOUT
        while alive(comp) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(comp):
            log(f"{comp['name']} did not stop within {STOP_TIMEOUT} s, killing it")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # leftovers in the group, e.g. postgres backends
    # Wait until the group is reaped, not just dead: a zombie still "exists" for
    # kill(pid, 0), and postgres refuses to start while its old postmaster PID exists.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):  # reap it ourselves if it is our child
            os.waitpid(pid, os.WNOHANG)
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    comp["pid"] = None
