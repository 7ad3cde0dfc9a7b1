#!/usr/bin/env python3
"""Benchmark: haproxy-systemd-wrapper (master-worker and foreground) against native `haproxy -Ws`.

One run = start the process under test with a notify socket of ours as NOTIFY_SOCKET (as systemd
would), measure the start, put a continuous load of new connections on it (wrk, `Connection: close`),
reload it N times with SIGUSR2, stop the load, stop it with SIGTERM. Runs of the three kinds alternate,
in several rounds, on one generated config; the report gives medians and wrapper/native ratios and
checks the targets of issue #5 (PASS/MISS; exit status 1 on a miss unless BENCH_ALLOW_MISS=1).

Rules this file keeps: no sleeping to wait for an event (the notify socket is read with a timeout, other
conditions are polled against a deadline); only processes this bench started are signalled, by pid
(the bench is a child subreaper, so anything they leave behind is re-parented to it and found);
everything is cleaned up on every exit path; traffic only on 127.0.0.1.

Standard library only. Settings come from the environment (BENCH_*, below), documented in BENCHMARKS.md.
"""

import ctypes
import datetime
import json
import os
import platform
import random
import re
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def env_int(name, default):
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


ROUNDS = env_int("BENCH_ROUNDS", 6)
RELOADS = env_int("BENCH_RELOADS", 50)
WRK_CONNS = env_int("BENCH_WRK_CONNS", 8)
WRK_DELAY_MS = env_int("BENCH_WRK_DELAY_MS", 1)
ALLOW_MISS = os.environ.get("BENCH_ALLOW_MISS", "") not in ("", "0")
KINDS_WANTED = [k for k in (os.environ.get("BENCH_KINDS") or "wrapper-mw,wrapper-fg,native").split(",") if k]
WRAPPER = os.environ.get("BENCH_WRAPPER") or os.path.join(ROOT, "target", "release", "haproxy-systemd-wrapper")
HAPROXY = os.environ.get("BENCH_HAPROXY") or shutil.which("haproxy") or "/usr/sbin/haproxy"
WRK = os.environ.get("BENCH_WRK") or shutil.which("wrk") or "/usr/bin/wrk"
# Where the results section is written ("-" to skip). Empty settings count as unset (make exports them).
RESULTS_FILE = os.environ.get("BENCH_RESULTS") or os.path.join(ROOT, "BENCHMARKS.md")
# Optional: every run's raw figures (seconds, KiB) as JSON, for a closer look.
JSON_FILE = os.environ.get("BENCH_JSON") or ""

READY_TIMEOUT = 30.0  # s, start or reload
STOP_TIMEOUT = 30.0  # s, SIGTERM -> exit
POLL = 0.001  # s, process-tree poll interval once READY=1 has arrived

# Targets. Reload latency (issue #10): ratio 1.00 against native, judged with the bootstrap interval
# (see ratio_target_met). RSS: issue #5.
RELOAD_RATIO_TARGET = 1.00
RSS_MAX_KIB = 1536

KIND_LABEL = {
    "wrapper-mw": "wrapper -Ws",
    "wrapper-fg": "wrapper fg -x",
    "native": "haproxy -Ws",
}
WRAPPER_KINDS = ("wrapper-mw", "wrapper-fg")

CPU_PUT = 0  # process under test (and all its haproxy processes)
CPU_LOAD = 1  # wrk and this script


def log(msg):
    sys.stderr.write("bench: %s\n" % msg)
    sys.stderr.flush()


def now():
    return time.monotonic()


def ms(seconds):
    return None if seconds is None else seconds * 1000.0


# ---------------------------------------------------------------------------------------------------
# Processes we started, for cleanup on every exit path.

STARTED = {}  # pid -> Popen


def pin_to(cpu):
    if os.cpu_count() and os.cpu_count() >= 2:
        return lambda: os.sched_setaffinity(0, {cpu})
    return None


def spawn(argv, cpu, **kwargs):
    # Own session: a ^C on the terminal reaches only the bench, which then stops what it started.
    proc = subprocess.Popen(argv, preexec_fn=pin_to(cpu), start_new_session=True, **kwargs)
    STARTED[proc.pid] = proc
    return proc


def set_child_subreaper():
    PR_SET_CHILD_SUBREAPER = 36
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log("warning: prctl(PR_SET_CHILD_SUBREAPER) failed: %s" % os.strerror(ctypes.get_errno()))


def my_children():
    """Pids whose parent is this script (our children, and orphans re-parented to us)."""
    me = os.getpid()
    return [pid for pid, st in PROCS.scan(full=True).items() if st[0] == me]


def reap_strays():
    """Kill (by pid) and reap every child of ours; return what was found. Repeated while killing a
    stray re-parents its own children to us (a master's workers)."""
    strays = []
    for _ in range(20):
        found = my_children()
        if not found:
            break
        for pid in found:
            st = PROCS.table.get(pid)
            strays.append("%d(%s%s)" % (pid, st[1], " zombie" if st[2] == "Z" else "") if st else str(pid))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    return strays


def cleanup():
    for pid, proc in list(STARTED.items()):
        if proc.poll() is None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log("warning: pid %d did not die" % pid)
        STARTED.pop(pid, None)
    reap_strays()


# ---------------------------------------------------------------------------------------------------
# /proc


class ProcTable:
    """pid -> (ppid, comm, state) for every process; cheap incremental refresh.

    /proc has no children lists on every kernel, so descendants are found through ppids. A full scan
    reads every /proc/PID/stat (milliseconds); the incremental one reads only new pids, the processes
    of the tree being watched and orphans (whose parent may have changed). Pid reuse within one
    incremental window (milliseconds) would need a pid wrap-around, so a full scan before each
    reload and each sample is enough.
    """

    def __init__(self):
        self.table = {}

    @staticmethod
    def stat(pid):
        try:
            with open("/proc/%d/stat" % pid, "rb") as f:
                data = f.read()
        except OSError:
            return None
        right = data.rindex(b")")
        comm = data[data.index(b"(") + 1:right].decode("utf-8", "replace")
        fields = data[right + 2:].split(b" ", 3)
        return (int(fields[1]), comm, fields[0].decode())

    def scan(self, full=False, watch=()):
        live = set()
        for name in os.listdir("/proc"):
            if name.isdigit():
                live.add(int(name))
        old = {} if full else self.table
        table = {}
        for pid in live:
            st = old.get(pid)
            if st is None or pid in watch or st[0] not in live:
                st = self.stat(pid)
                if st is None:
                    continue
            table[pid] = st
        self.table = table
        return table

    def descendants(self, root, full=False, watch=()):
        """{pid: (ppid, comm, state)} of every descendant of root (zombies included, root excluded).

        Every descendant's stat is read afresh: comm changes at exec, state at exit."""
        table = self.scan(full=full, watch=watch)
        children = {}
        for pid, st in table.items():
            children.setdefault(st[0], []).append(pid)
        out = {}
        stack = [root]
        while stack:
            parent = stack.pop()
            for child in children.get(parent, ()):
                if child in out:
                    continue
                st = self.stat(child)
                if st is None:
                    table.pop(child, None)
                    continue
                table[child] = st
                if st[0] == parent:
                    out[child] = st
                    stack.append(child)
        return out


PROCS = ProcTable()


def memory_kib(pid):
    """VmRSS (the target), its anonymous and file-backed parts, and PSS (shared pages divided among
    the processes that map them), in KiB."""
    out = {"rss": None, "anon": None, "file": None, "pss": None}
    keys = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file"}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                key = keys.get(line.split(":", 1)[0] + ":")
                if key:
                    out[key] = int(line.split()[1])
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    out["pss"] = int(line.split()[1])
    except OSError:
        pass
    return out


def cpu_ms(pid):
    """CPU time the process itself (not its children) has used, in ms: /proc/PID/sched's
    se.sum_exec_runtime (ns precision) where the kernel has it, else utime+stime (clock ticks)."""
    try:
        with open("/proc/%d/sched" % pid) as f:
            for line in f:
                if line.startswith("se.sum_exec_runtime"):
                    return float(line.split(":")[1])
    except OSError:
        pass
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1000.0 / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


def settled_fd_count(pid, reads=3, gap=0.002):
    """The fewest fds of `reads` looks `gap` s apart: a file the wrapper has open for a moment (the
    reload ledger it writes right after READY=1) is no leak; a leaked fd is in every look."""
    counts = []
    for i in range(reads):
        if i:
            time.sleep(gap)
        counts.append(fd_count(pid))
    known = [c for c in counts if c is not None]
    return min(known) if known else None


# ---------------------------------------------------------------------------------------------------
# The notify socket (what systemd would own)


class Notify:
    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(path)
        self.sock.setblocking(False)

    def recv(self, timeout):
        """Messages that arrive within timeout (all queued ones, at least one if any arrives)."""
        out = []
        if not select.select([self.sock], [], [], max(0.0, timeout))[0]:
            return out
        t = now()
        while True:
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(65536, socket.CMSG_SPACE(12))
            except BlockingIOError:
                return out
            pid = None
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:12])[0]
            fields = {}
            for line in data.decode("utf-8", "replace").split("\n"):
                if "=" in line:
                    key, value = line.split("=", 1)
                    fields[key] = value
            out.append((t, pid, fields))

    def close(self):
        self.sock.close()


# ---------------------------------------------------------------------------------------------------
# Traffic


def probe(port, timeout=1.0):
    """One HTTP request on a new connection; True when answered 200."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
            return data.startswith(b"HTTP/1.") and data[9:12] == b"200"
    except OSError:
        return False


WRK_SCRIPT = """\
-- generated by bench/bench.py: say when the first response arrives; think time per connection
local first = true
function response(status, headers, body)
  if first then
    first = false
    io.stderr:write("bench-wrk: first response " .. status .. "\\n")
  end
end
"""


class Load:
    """wrk with `Connection: close` (every request a new connection), on CPU_LOAD."""

    def __init__(self, tmp, port, log_path):
        script = os.path.join(tmp, "load.lua")
        with open(script, "w") as f:
            f.write(WRK_SCRIPT)
            if WRK_DELAY_MS > 0:
                f.write("function delay()\n  return %d\nend\n" % WRK_DELAY_MS)
        self.argv = [WRK, "-t1", "-c%d" % WRK_CONNS, "-d3600s", "--timeout", "5s", "-s", script,
                     "-H", "Connection: close", "http://127.0.0.1:%d/" % port]
        self.out = open(log_path, "w+")
        self.proc = spawn(self.argv, CPU_LOAD, stdout=self.out, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL)
        os.set_blocking(self.proc.stderr.fileno(), False)

    def wait_first_response(self, timeout=10.0):
        deadline = now() + timeout
        buf = b""
        while now() < deadline:
            if select.select([self.proc.stderr], [], [], deadline - now())[0]:
                chunk = self.proc.stderr.read() or b""
                if not chunk and self.proc.poll() is not None:
                    break
                buf += chunk
                if b"bench-wrk: first response" in buf:
                    return True
        raise RunFailed("wrk got no response within %.0f s (%s)" % (timeout, buf.decode(errors="replace").strip()))

    def stop(self):
        """SIGINT (wrk prints its summary), parse it: dict(requests, errors..., failed)."""
        os.kill(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        STARTED.pop(self.proc.pid, None)
        self.proc.stderr.close()
        self.out.seek(0)
        text = self.out.read()
        self.out.close()
        return parse_wrk(text)


def parse_wrk(text):
    res = {"requests": None, "connect": 0, "read": 0, "write": 0, "timeout": 0, "non2xx": 0}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    if not m:
        raise RunFailed("cannot parse wrk's output:\n" + text)
    res["requests"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        res["connect"], res["read"], res["write"], res["timeout"] = map(int, m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        res["non2xx"] = int(m.group(1))
    res["failed"] = res["connect"] + res["read"] + res["write"] + res["timeout"] + res["non2xx"]
    return res


# ---------------------------------------------------------------------------------------------------
# One run


class RunFailed(Exception):
    pass


def write_config(tmp, port):
    path = os.path.join(tmp, "haproxy.cfg")
    sock = os.path.join(tmp, "admin.sock")
    with open(path, "w") as f:
        f.write("""\
# generated by bench/bench.py
global
    stats socket %s mode 600 level admin expose-fd listeners
    nbthread 1
    hard-stop-after 30s

defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 10s

frontend fe
    bind 127.0.0.1:%d
    http-request return status 200 content-type text/plain string "ok"
""" % (sock, port))
    return path, sock


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(kind, cfg, sock):
    if kind == "native":
        return [HAPROXY, "-Ws", "-f", cfg]
    if kind == "wrapper-mw":
        return [WRAPPER, "--haproxy", HAPROXY, "-Ws", "-f", cfg]
    if kind == "wrapper-fg":
        return [WRAPPER, "--haproxy", HAPROXY, "-f", cfg, "-x", sock]
    raise ValueError(kind)


def tracked(kind, desc, root):
    """The haproxy processes that serve: master-worker -> workers (a haproxy whose parent is a
    haproxy); foreground -> every haproxy. The master of master-worker lives on across reloads."""
    def comm(pid):
        return "haproxy" if pid == root and kind == "native" else desc.get(pid, (0, ""))[1]
    out = {}
    for pid, st in desc.items():
        if st[1] != "haproxy":
            continue
        if kind == "wrapper-fg" or comm(st[0]) == "haproxy":
            out[pid] = st
    return out


def sample(root):
    desc = PROCS.descendants(root, full=True)
    mem = memory_kib(root)
    return {
        "rss": mem["rss"],
        "anon": mem["anon"],
        "file": mem["file"],
        "pss": mem["pss"],
        "fds": settled_fd_count(root),
        "cpu_ms": cpu_ms(root),
        "procs": len(desc),
        "zombies": sum(1 for st in desc.values() if st[2] == "Z"),
    }


class Run:
    def __init__(self, kind, tmp, cfg, sock, port, notify, index):
        self.kind = kind
        self.port = port
        self.notify = notify
        self.argv = command(kind, cfg, sock)
        self.log_path = os.path.join(tmp, "%02d-%s.log" % (index, kind))
        self.wrk_log = os.path.join(tmp, "%02d-%s.wrk" % (index, kind))
        self.proc = None
        self.r = {"kind": kind, "defects": [], "reloads": [], "samples": [], "error": None}

    def defect(self, text):
        if text not in self.r["defects"]:
            self.r["defects"].append(text)
        log("  %s: DEFECT: %s" % (self.kind, text))

    def messages(self, timeout):
        out = self.notify.recv(timeout)
        for _t, pid, fields in out:
            if pid != self.proc.pid:
                self.defect("notify message from pid %s, not the main pid %d: %r" % (pid, self.proc.pid, fields))
        return out

    def check_alive(self, what):
        rc = self.proc.poll()
        if rc is not None:
            STARTED.pop(self.proc.pid, None)
            how = "was killed by signal %d" % -rc if rc < 0 else "exited with status %d" % rc
            raise RunFailed("%s %s during %s" % (os.path.basename(self.argv[0]), how, what))

    # -- start: exec -> READY=1, exec -> first served request
    def start(self):
        self.notify.recv(0)  # drop anything stale
        env = dict(os.environ)
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"):
            env.pop(key, None)
        env["NOTIFY_SOCKET"] = self.notify.path
        self.logf = open(self.log_path, "w")
        t0 = now()
        self.proc = spawn(self.argv, CPU_PUT, env=env, stdin=subprocess.DEVNULL, stdout=self.logf,
                          stderr=subprocess.STDOUT)
        deadline = t0 + READY_TIMEOUT
        t_ready = t_served = None
        while now() < deadline and (t_ready is None or t_served is None):
            for t, _pid, fields in self.messages(POLL):
                if fields.get("READY") == "1" and t_ready is None:
                    t_ready = t
                    # At READY=1 the service must already serve: one request right now.
                    if probe(self.port):
                        if t_served is None:
                            t_served = now()
                    else:
                        self.defect("READY=1 before serving (a request right after READY=1 failed)")
            if t_served is None and probe(self.port):
                t_served = now()
            self.check_alive("start")
        if t_ready is None:
            raise RunFailed("no READY=1 within %.0f s of start" % READY_TIMEOUT)
        if t_served is None:
            raise RunFailed("not serving within %.0f s of start" % READY_TIMEOUT)
        self.r["start_ready"] = t_ready - t0
        self.r["start_served"] = t_served - t0

    # -- one reload: signal -> READY=1 after RELOADING=1, a new generation, and no old process left
    def reload(self):
        root = self.proc.pid
        before = tracked(self.kind, PROCS.descendants(root, full=True), root)
        if not before:
            raise RunFailed("no serving haproxy before the reload")
        self.notify.recv(0)
        t0 = now()
        os.kill(root, signal.SIGUSR2)
        deadline = t0 + READY_TIMEOUT
        reloading = None
        t_ready = None
        while True:
            remaining = deadline - now()
            if remaining <= 0:
                raise RunFailed("reload not done within %.0f s (READY=1 after RELOADING=1: %s)"
                                % (READY_TIMEOUT, t_ready is not None))
            for t, _pid, fields in self.messages(POLL if t_ready is not None else min(remaining, 0.05)):
                if fields.get("RELOADING") == "1":
                    if reloading is None:
                        reloading = t
                elif fields.get("READY") == "1" and reloading is not None and t_ready is None:
                    t_ready = t
                    self.reload_status(fields.get("STATUS"))
            self.check_alive("a reload")
            if t_ready is None:
                continue
            desc = PROCS.descendants(root, watch=before)
            cur = tracked(self.kind, desc, root)
            # An old process is gone once its pid has left /proc (a zombie is not gone), wherever it was
            # re-parented to.
            old_left = [pid for pid in before if pid in PROCS.table]
            new_live = [pid for pid, st in cur.items() if pid not in before and st[2] != "Z"]
            if new_live and not old_left:
                done = now()
                self.r["reloads"].append(done - t0)
                self.r.setdefault("ready_to_done", []).append(done - t_ready)
                self.r.setdefault("to_reloading", []).append(reloading - t0)
                self.r.setdefault("to_ready", []).append(t_ready - t0)
                return

    def reload_status(self, status):
        """The wrapper's STATUS= after a reload: `...; last reload: ok in N ms` (docs/DESIGN.md)."""
        if self.kind not in WRAPPER_KINDS:
            return
        m = re.search(r"last reload: (ok in (\d+) ms|failed[^;]*)", status or "")
        if not m:
            self.defect("READY=1 after a reload without a `last reload:` STATUS: %r" % status)
        elif m.group(2) is None:
            self.defect("the wrapper reported a failed reload: %s" % m.group(1))
        else:
            self.r.setdefault("self_reported", []).append(int(m.group(2)) / 1000.0)

    def stop(self):
        root = self.proc.pid
        self.notify.recv(0)
        t0 = now()
        os.kill(root, signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise RunFailed("still running %.0f s after SIGTERM" % STOP_TIMEOUT)
        self.r["stop"] = now() - t0
        self.r["exit"] = rc if rc >= 0 else 128 - rc
        STARTED.pop(root, None)
        if not any(f.get("STOPPING") == "1" for _t, _p, f in self.notify.recv(0)):
            self.defect("no STOPPING=1 after SIGTERM")

    def run(self):
        log("%s: %s" % (self.kind, " ".join(self.argv)))
        load = None
        try:
            self.start()
            load = Load(os.path.dirname(self.log_path), self.port, self.wrk_log)
            load.wait_first_response()
            root = self.proc.pid
            self.r["before"] = sample(root)
            for _ in range(RELOADS):
                self.reload()
                self.r["samples"].append(sample(root))
            self.r["after"] = self.r["samples"][-1] if self.r["samples"] else self.r["before"]
            self.r["wrk"] = load.stop()
            load = None
            if not probe(self.port):
                self.defect("not serving after the reload series")
            self.stop()
            strays = reap_strays()
            self.r["left"] = len(strays)
            if strays:
                self.defect("processes left after stop: %s" % " ".join(strays))
        except RunFailed as e:
            self.r["error"] = str(e)
            log("  %s: FAILED: %s" % (self.kind, e))
        finally:
            if load is not None and load.proc.poll() is None:
                try:
                    self.r["wrk"] = load.stop()
                except (RunFailed, OSError):
                    pass
            if self.proc is not None and self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            if self.proc is not None:
                STARTED.pop(self.proc.pid, None)
            reap_strays()
            if hasattr(self, "logf"):
                self.logf.close()
        if self.r["error"]:
            with open(self.log_path, errors="replace") as f:
                tail = f.read().splitlines()[-8:]
            for line in tail:
                log("  | " + line)
        else:
            rl = self.r["reloads"]
            w = self.r.get("wrk", {})
            log("  start %.1f/%.1f ms, reload median %.1f ms (max %.1f), failed %s/%s, rss %s->%s KiB, "
                "fds %s->%s, stop %.1f ms, exit %s" % (
                    ms(self.r["start_ready"]), ms(self.r["start_served"]), ms(statistics.median(rl)),
                    ms(max(rl)), w.get("failed"), w.get("requests"), self.r["before"]["rss"],
                    self.r["after"]["rss"], self.r["before"]["fds"], self.r["after"]["fds"],
                    ms(self.r["stop"]), self.r["exit"]))
        return self.r


# ---------------------------------------------------------------------------------------------------
# Report


def pct(values, p):
    """Nearest-rank percentile."""
    s = sorted(values)
    if not s:
        return None
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def aggregate(runs):
    ok = [r for r in runs if not r["error"]]
    a = {"runs": len(runs), "ok": len(ok),
         "run_meds": [None if r["error"] else statistics.median(r["reloads"]) for r in runs], "errors": [r["error"] for r in runs if r["error"]],
         "defects": sorted({d for r in runs for d in r["defects"]})}
    if not ok:
        return a
    reloads = [x for r in ok for x in r["reloads"]]
    a["all_reloads_by_run"] = [r["reloads"] for r in ok]
    a["start_ready"] = median([r["start_ready"] for r in ok])
    a["start_served"] = median([r["start_served"] for r in ok])
    a["reload_n"] = len(reloads)
    a["reload_med"] = statistics.median(reloads)
    a["reload_p95"] = pct(reloads, 95)
    a["reload_max"] = max(reloads)
    a["reload_round_meds"] = [statistics.median(r["reloads"]) for r in ok]
    a["failed"] = sum(r["wrk"]["failed"] for r in ok)
    a["requests"] = sum(r["wrk"]["requests"] for r in ok)
    a["wrk_detail"] = {k: sum(r["wrk"][k] for r in ok) for k in ("connect", "read", "write", "timeout", "non2xx")}
    for key in ("rss", "fds", "procs", "zombies"):
        a[key + "_before"] = max(r["before"][key] for r in ok)
        a[key + "_after"] = max(r["after"][key] for r in ok)
        series = [s[key] for r in ok for s in [r["before"]] + r["samples"]]
        a[key + "_max"] = max(series)
        a[key + "_min"] = min(series)
        a[key + "_constant"] = all(
            all(s[key] == r["before"][key] for s in r["samples"]) for r in ok)
    for key in ("anon", "file", "pss"):
        a[key + "_after"] = max(r["after"][key] or 0 for r in ok)
    per_reload = [(r["after"]["cpu_ms"] - r["before"]["cpu_ms"]) / len(r["reloads"]) for r in ok
                  if r["reloads"] and r["after"].get("cpu_ms") is not None and r["before"].get("cpu_ms") is not None]
    a["cpu_per_reload"] = median(per_reload)
    for key in ("ready_to_done", "to_reloading", "to_ready", "self_reported"):
        a[key] = median([x for r in ok for x in r.get(key, [])])
    a["stop"] = median([r["stop"] for r in ok])
    a["exits"] = sorted({r["exit"] for r in ok})
    a["left"] = sum(r["left"] for r in ok)
    return a


def fmt_ms(v):
    return "-" if v is None else ("%.1f" % ms(v))


def ratio(a, b, key):
    if key not in a or key not in b or not b[key]:
        return "-"
    return "%.2f" % (a[key] / b[key])


def table(aggs, kinds):
    cols = [k for k in kinds]
    ratio_cols = [k for k in cols if k in WRAPPER_KINDS and "native" in cols]
    head = [""] + [KIND_LABEL[k] for k in cols] + [
        ("-Ws" if k == "wrapper-mw" else "fg") + " / native" for k in ratio_cols]
    rows = []

    def row(label, key, fmt, with_ratio=False):
        cells = [label]
        for k in cols:
            a = aggs[k]
            cells.append(fmt(a) if a.get("ok") else ("0/%d (failed)" % a["runs"] if key == "runs" else "-"))
        for k in ratio_cols:
            cells.append(ratio(aggs[k], aggs["native"], key) if with_ratio and aggs[k].get("ok") else "")
        rows.append(cells)

    row("runs ok", "runs", lambda a: "%d/%d" % (a["ok"], a["runs"]))
    row("start: exec -> READY=1 (ms, median)", "start_ready", lambda a: fmt_ms(a["start_ready"]), True)
    row("start: exec -> first served request (ms)", "start_served", lambda a: fmt_ms(a["start_served"]), True)
    row("reloads measured", None, lambda a: str(a["reload_n"]))
    row("reload median (ms)", "reload_med", lambda a: fmt_ms(a["reload_med"]), True)
    row("reload p95 (ms)", "reload_p95", lambda a: fmt_ms(a["reload_p95"]), True)
    row("reload max (ms)", "reload_max", lambda a: fmt_ms(a["reload_max"]), True)
    def per_run(a):
        meds = a["reload_round_meds"]
        if len(meds) <= 8:
            return " ".join("%.1f" % ms(x) for x in meds)
        return "%.1f .. %.1f (%d runs)" % (ms(min(meds)), ms(max(meds)), len(meds))
    row("reload median per run, by round (ms)", None, per_run)
    row("reload: signal -> RELOADING=1 (ms, median)", "to_reloading", lambda a: fmt_ms(a["to_reloading"]), True)
    row("reload: signal -> READY=1 (ms, median)", "to_ready", lambda a: fmt_ms(a["to_ready"]), True)
    row("reload: READY=1 -> old processes gone (ms, median)", "ready_to_done", lambda a: fmt_ms(a["ready_to_done"]), True)
    row("reload as the wrapper's STATUS reports it (ms, median)", None, lambda a: fmt_ms(a["self_reported"]))
    row("main process CPU time per reload (ms; native: the master's)", None,
        lambda a: "-" if a["cpu_per_reload"] is None else "%.2f" % a["cpu_per_reload"])
    if ratio_cols:
        cells = ["reload: median of per-round ratios"] + [""] * len(cols)
        for k in ratio_cols:
            pairs = [w / n for w, n in zip(aggs[k]["run_meds"], aggs["native"]["run_meds"]) if w and n]
            cells.append("%.2f" % statistics.median(pairs) if pairs else "-")
        rows.append(cells)
    row("failed requests / requests", None, lambda a: "%d / %d" % (a["failed"], a["requests"]))
    row("  wrk connect/read/write/timeout/non-2xx", None,
        lambda a: "/".join(str(a["wrk_detail"][k]) for k in ("connect", "read", "write", "timeout", "non2xx")))
    row("main process RSS before -> after (KiB)", None, lambda a: "%d -> %d" % (a["rss_before"], a["rss_after"]))
    row("main process RSS max over series (KiB)", None, lambda a: "%d" % a["rss_max"])
    row("  after: anon / file-backed / PSS (KiB)", None, lambda a: "%d / %d / %d" % (a["anon_after"], a["file_after"], a["pss_after"]))
    row("main process open fds before -> after", None,
        lambda a: "%d -> %d%s" % (a["fds_before"], a["fds_after"], "" if a["fds_constant"] else " (varied %d..%d)" % (a["fds_min"], a["fds_max"])))
    row("descendants before -> after", None,
        lambda a: "%d -> %d%s" % (a["procs_before"], a["procs_after"], "" if a["procs_constant"] else " (varied %d..%d)" % (a["procs_min"], a["procs_max"])))
    row("zombies after series (max)", None, lambda a: str(a["zombies_after"]))
    row("stop: SIGTERM -> exit (ms, median)", "stop", lambda a: fmt_ms(a["stop"]), True)
    row("exit status after SIGTERM", None, lambda a: ",".join(str(x) for x in a["exits"]))
    row("processes left after stop", None, lambda a: str(a["left"]))

    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(head)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(r)) + " |")
    return "\n".join(lines)


def checks(aggs, kinds):
    """[(PASS|MISS, text)] for the targets of issue #5 and the defects the bench detects."""
    out = []

    def add(ok, text):
        out.append(("PASS" if ok else "MISS", text))

    native = aggs.get("native", {})
    if "native" in kinds and not native.get("ok"):
        add(False, "native haproxy -Ws ran (needed for the ratios): %s" % "; ".join(native.get("errors", [])))
    for k in kinds:
        if k not in WRAPPER_KINDS:
            continue
        a = aggs[k]
        name = KIND_LABEL[k]
        if not a.get("ok") or a["ok"] < a["runs"]:
            add(False, "%s: every run completes (%d/%d ok; %s)" % (name, a.get("ok", 0), a["runs"], "; ".join(a["errors"])))
            if not a.get("ok"):
                continue
        if native.get("ok"):
            r = a["reload_med"] / native["reload_med"]
            ci = ratio_interval(a["all_reloads_by_run"], native["all_reloads_by_run"])
            add(ratio_target_met(r, ci), "%s: reload median ratio to native <= %.2f, or %.2f within its 90%% interval: "
                "%.1f ms vs %.1f ms = %.3f, %s" % (
                name, RELOAD_RATIO_TARGET, RELOAD_RATIO_TARGET, ms(a["reload_med"]), ms(native["reload_med"]), r,
                "90%% bootstrap interval over runs %.3f .. %.3f" % ci if ci else "no interval (fewer than 2 runs)"))
        add(a["failed"] == 0, "%s: zero failed requests during the reloads: %d of %d failed" % (name, a["failed"], a["requests"]))
        add(a["rss_max"] <= RSS_MAX_KIB, "%s: wrapper RSS at most 1.5 MiB: max %d KiB (%.2f MiB; after the series "
            "%d KiB anonymous + %d KiB file-backed, PSS %d KiB)" % (
                name, a["rss_max"], a["rss_max"] / 1024.0, a["anon_after"], a["file_after"], a["pss_after"]))
        add(a["fds_constant"], "%s: wrapper fd count constant over the series: %d -> %d (range %d..%d)" % (
            name, a["fds_before"], a["fds_after"], a["fds_min"], a["fds_max"]))
        add(a["procs_constant"] and a["zombies_max"] == 0,
            "%s: process count constant, no zombies: %d -> %d (range %d..%d), zombies max %d" % (
                name, a["procs_before"], a["procs_after"], a["procs_min"], a["procs_max"], a["zombies_max"]))
        add(not any("READY=1" in d for d in a["defects"]), "%s: READY=1 only once serving" % name)
        add(a["exits"] == [0], "%s: exit status 0 after SIGTERM: %s" % (name, ",".join(map(str, a["exits"]))))
        add(a["left"] == 0, "%s: no process left after stop: %d" % (name, a["left"]))
        other = [d for d in a["defects"] if "READY=1" not in d and "left after stop" not in d]
        if other:
            add(False, "%s: other defects: %s" % (name, "; ".join(other)))
    return out


def ratio_target_met(r, ci, target=RELOAD_RATIO_TARGET):
    """The reload-latency target: met when the median ratio is at most the target, or the target lies
    within the 90 % bootstrap interval of the ratio (the difference is not distinguishable from noise).
    Without an interval (a single round) only the first test applies."""
    if r <= target:
        return True
    return ci is not None and ci[0] <= target <= ci[1]


def ratio_interval(runs_a, runs_b, n=1000):
    """90 % bootstrap interval of median(a) / median(b), resampling whole runs (the runs, not the
    reloads, are the independent units: the background load drifts between runs)."""
    if len(runs_a) < 2 or len(runs_b) < 2:
        return None
    rng = random.Random(5)
    ratios = []
    for _ in range(n):
        a = [x for rl in rng.choices(runs_a, k=len(runs_a)) for x in rl]
        b = [x for rl in rng.choices(runs_b, k=len(runs_b)) for x in rl]
        ratios.append(statistics.median(a) / statistics.median(b))
    ratios.sort()
    return ratios[int(0.05 * n)], ratios[int(0.95 * n) - 1]


def noise(aggs):
    """A/A comparison: native's pooled reload median over the odd rounds against the even rounds."""
    n = aggs.get("native", {})
    meds = n.get("all_reloads_by_run")
    if not meds or len(meds) < 2:
        return None
    odd = [x for i, rl in enumerate(meds) if i % 2 == 0 for x in rl]
    even = [x for i, rl in enumerate(meds) if i % 2 == 1 for x in rl]
    if not odd or not even:
        return None
    return statistics.median(odd) / statistics.median(even)


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        hv = subprocess.run([HAPROXY, "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        hv = "?"
    try:
        wv = subprocess.run([WRK, "-v"], capture_output=True, text=True)
        wv = (wv.stdout + wv.stderr).splitlines()[0]
    except (OSError, IndexError):
        wv = "?"
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(), "haproxy": hv,
            "wrk": wv, "python": platform.python_version()}


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def git_head():
    """The commit, and whether the wrapper's sources differ from it (the binary was built from those)."""
    try:
        head = subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%h %s"], capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
                               capture_output=True, text=True).stdout.strip()
        return head + (" (with uncommitted changes in src/ or Cargo.*)" if dirty else "")
    except OSError:
        return "?"


BEGIN = "<!-- bench:results:begin (written by bench/bench.py; edit outside these markers) -->"
END = "<!-- bench:results:end -->"


def write_block(path, begin, end, heading, text):
    """Replaces the block between the markers `begin` and `end` in `path` (BENCHMARKS.md) with
    `text`, or appends it under `heading`; "-" writes nothing. Shared by the bench, the systemd part
    and the soak."""
    if path == "-":
        return
    try:
        with open(path) as f:
            doc = f.read()
    except FileNotFoundError:
        doc = "# Benchmarks\n\n"
    block = begin + "\n" + text.rstrip() + "\n" + end
    if begin in doc and end in doc:
        doc = doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip() + "\n\n## " + heading + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(doc)
    log("results written to %s" % path)


def write_results(text):
    write_block(RESULTS_FILE, BEGIN, END, "Latest results", text)


# ---------------------------------------------------------------------------------------------------


def preflight(kinds):
    for prog, what in ((HAPROXY, "haproxy"), (WRK, "wrk")):
        if not (os.path.isfile(prog) and os.access(prog, os.X_OK)):
            raise SystemExit("bench: %s not found (%s); install it: tests/install-deps.sh" % (what, prog))
    if any(k in WRAPPER_KINDS for k in kinds) and not os.access(WRAPPER, os.X_OK):
        raise SystemExit("bench: wrapper not built (%s); run `make build` or set BENCH_KINDS=native" % WRAPPER)
    for k in kinds:
        if k not in KIND_LABEL:
            raise SystemExit("bench: unknown kind %r in BENCH_KINDS (known: %s)" % (k, ", ".join(KIND_LABEL)))


def main():
    kinds = KINDS_WANTED
    preflight(kinds)
    set_child_subreaper()
    if os.cpu_count() and os.cpu_count() >= 2:
        os.sched_setaffinity(0, {CPU_LOAD})
    # SIGTERM/SIGHUP to the bench: unwind through the finally blocks (cleanup of everything started).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: (_ for _ in ()).throw(KeyboardInterrupt()))

    tmp = tempfile.mkdtemp(prefix="haproxy-bench.")
    notify = None
    try:
        port = free_port()
        cfg, sock = write_config(tmp, port)
        check = subprocess.run([HAPROXY, "-c", "-q", "-f", cfg], capture_output=True, text=True)
        if check.returncode != 0:
            raise SystemExit("bench: generated config rejected:\n" + check.stdout + check.stderr)
        notify = Notify(os.path.join(tmp, "notify.sock"))
        started = datetime.datetime.now(datetime.timezone.utc)
        load_start = loadavg()
        log("%d round(s) x %s, %d reloads per run, wrk -c%d (think time %d ms), port %d, tmp %s" % (
            ROUNDS, ",".join(kinds), RELOADS, WRK_CONNS, WRK_DELAY_MS, port, tmp))
        runs = {k: [] for k in kinds}
        index = 0
        for rnd in range(ROUNDS):
            order = kinds[rnd % len(kinds):] + kinds[:rnd % len(kinds)]
            for kind in order:
                index += 1
                log("round %d/%d, run %d:" % (rnd + 1, ROUNDS, index))
                runs[kind].append(Run(kind, tmp, cfg, sock, port, notify, index).run())
        elapsed = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
        aggs = {k: aggregate(v) for k, v in runs.items()}
        results = checks(aggs, kinds)
        mach = machine()
        cmdline = " ".join(["make bench"] + ["%s=%s" % (k, v) for k, v in sorted(os.environ.items())
                                             if k.startswith("BENCH_") and v])
        text = []
        text.append("Run: %s UTC, %.0f s, `%s`; commit %s. Load average (1/5/15 min) at start %s, at end %s." % (
            started.strftime("%Y-%m-%d %H:%M"), elapsed, cmdline, git_head(), load_start, loadavg()))
        text.append("Machine: %s CPUs, %s, kernel %s; %s; %s; Python %s." % (
            mach["nproc"], mach["cpu"], mach["kernel"], mach["haproxy"], mach["wrk"], mach["python"]))
        text.append("Load: `%s` (pinned to CPU %d; processes under test on CPU %d). %d round(s), %d reloads per run, "
                    "kinds alternating. Times are medians over runs (reload figures: over all reloads of all runs)."
                    % (" ".join(runs_argv_wrk()), CPU_LOAD, CPU_PUT, ROUNDS, RELOADS))
        text.append("")
        text.append(table(aggs, kinds))
        text.append("")
        for status, line in results:
            text.append("- %s %s" % (status, line))
        aa = noise(aggs)
        if aa is not None:
            text.append("- noise (A/A): native reload median, odd rounds / even rounds = %.2f" % aa)
        for k in kinds:
            for d in aggs[k]["defects"]:
                text.append("- defect (%s): %s" % (KIND_LABEL[k], d))
        report = "\n".join(text)
        if JSON_FILE:
            with open(JSON_FILE, "w") as f:
                json.dump({"machine": mach, "settings": {"rounds": ROUNDS, "reloads": RELOADS, "wrk_conns": WRK_CONNS,
                                                         "wrk_delay_ms": WRK_DELAY_MS}, "runs": runs}, f, indent=1)
        print()
        print(report)
        write_results(report)
        missed = [r for r in results if r[0] == "MISS"]
        if missed:
            print("\n%d target(s) missed%s" % (len(missed), " (BENCH_ALLOW_MISS=1: exit 0)" if ALLOW_MISS else ""))
            return 0 if ALLOW_MISS else 1
        return 0
    finally:
        cleanup()
        if notify is not None:
            notify.close()
        shutil.rmtree(tmp, ignore_errors=True)


def runs_argv_wrk():
    return [os.path.basename(WRK), "-t1", "-c%d" % WRK_CONNS, "-s", "load.lua", "-H", "'Connection: close'",
            "http://127.0.0.1:PORT/"] + (["# load.lua: delay() %d ms" % WRK_DELAY_MS] if WRK_DELAY_MS else [])


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        cleanup()
        log("interrupted")
        sys.exit(130)
