#!/usr/bin/env python3
"""Where the wrapper's master-worker reload time goes, seen by the kernel (needs root and tracefs).

    python3 bench/trace_handoff.py [RELOADS]        (default 20)

Starts the wrapper in master-worker mode the way `make bench` does (same generated config, pinned to
CPU 0, notify socket of ours; no load, so the figures are the wrapper's own cost, not the queueing of a
busy CPU), reloads it RELOADS times, and traces with ftrace, restricted to the bench, the wrapper and
the master: `signal:signal_generate` and `sched:sched_process_exec`, on CLOCK_MONOTONIC (`trace_clock
mono`, the clock the bench reads). Per reload:

    signal -> exec        the bench's SIGUSR2 to the wrapper -> the wrapper's re-exec
    exec -> master        the re-exec -> the wrapper's SIGUSR2 to the haproxy master
    hand-on               signal -> master: what the wrapper puts in front of haproxy's own reload
    master -> READY       the master's SIGUSR2 -> the wrapper's READY=1 at the bench (haproxy's reload
                          plus the relay of the master's READY=1)

tracefs is mounted on /sys/kernel/tracing if it is not, and unmounted again; the tracing settings
touched are restored on every exit path.
"""

import os
import re
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

TRACING = "/sys/kernel/tracing"
EVENTS = "signal:signal_generate sched:sched_process_exec"
LINE = re.compile(r"^\s*(?P<comm>.+?)-(?P<tid>\d+)\s+\[\d+\]\s+\S+\s+(?P<ts>\d+\.\d+):\s+(?P<event>\w+):\s+(?P<rest>.*)$")


class Tracefs:
    SETTINGS = ("tracing_on", "trace_clock", "set_event", "set_event_pid")

    def __init__(self):
        self.mounted = False
        self.saved = {}

    def path(self, name):
        return os.path.join(TRACING, name)

    def read(self, name):
        with open(self.path(name)) as f:
            return f.read()

    def write(self, name, value):
        with open(self.path(name), "w") as f:
            f.write(value)

    def __enter__(self):
        if not os.path.exists(self.path("trace")):
            if os.system("mount -t tracefs nodev %s" % TRACING) != 0:
                raise SystemExit("trace_handoff: cannot mount tracefs on %s (root needed)" % TRACING)
            self.mounted = True
        for name in self.SETTINGS:
            self.saved[name] = self.read(name)
        self.write("tracing_on", "0")
        self.write("trace_clock", "mono")
        self.write("set_event", EVENTS)
        self.write("trace", "")
        return self

    def __exit__(self, *exc):
        try:
            self.write("tracing_on", "0")
            self.write("set_event", "")
            self.write("set_event_pid", "")
            clock = re.search(r"\[(\w+)\]", self.saved["trace_clock"])
            self.write("trace_clock", clock.group(1) if clock else "local")
            self.write("set_event", " ".join(self.saved["set_event"].split()))
            self.write("set_event_pid", " ".join(self.saved["set_event_pid"].split()))
            self.write("tracing_on", self.saved["tracing_on"].strip() or "1")
            self.write("trace", "")
        finally:
            if self.mounted:
                os.system("umount %s" % TRACING)


def main():
    reloads = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    if os.geteuid() != 0:
        raise SystemExit("trace_handoff: needs root (ftrace)")
    bench.preflight(["wrapper-mw"])
    bench.set_child_subreaper()
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {bench.CPU_LOAD})
    tmp = tempfile.mkdtemp(prefix="haproxy-trace.")
    notify = None
    run = None
    try:
        port = bench.free_port()
        cfg, sock = bench.write_config(tmp, port)
        notify = bench.Notify(os.path.join(tmp, "notify.sock"))
        run = bench.Run("wrapper-mw", tmp, cfg, sock, port, notify, 1)
        run.start()
        wrapper = run.proc.pid
        masters = [p for p, st in bench.PROCS.descendants(wrapper, full=True).items()
                   if st[0] == wrapper and st[1] == "haproxy"]
        if len(masters) != 1:
            raise SystemExit("trace_handoff: expected one master under the wrapper, found %r" % masters)
        master = masters[0]
        with Tracefs() as tr:
            tr.write("set_event_pid", "%d %d %d" % (os.getpid(), wrapper, master))
            tr.write("tracing_on", "1")
            for _ in range(reloads):
                run.reload()
            tr.write("tracing_on", "0")
            trace = tr.read("trace")
        # READY=1 in trace time: the traced signal is within microseconds of the bench's t0.
        ready_at = [t0 + d for t0, d in zip(reload_starts(trace, os.getpid(), wrapper), run.r["to_ready"])]
        rows = pair(trace, os.getpid(), wrapper, master)
        run.stop()
        if len(rows) != reloads:
            print("trace_handoff: %d reloads but %d complete traces" % (reloads, len(rows)))
        print("per reload, ms:   signal->exec  exec->master  hand-on  master->READY  total")
        parts = {"a": [], "b": [], "c": [], "d": [], "e": []}
        for (t_sig, t_exec, t_master), t_ready in zip(rows, ready_at):
            a, b, c = t_exec - t_sig, t_master - t_exec, t_master - t_sig
            d, e = t_ready - t_master, t_ready - t_sig
            for k, v in zip("abcde", (a, b, c, d, e)):
                parts[k].append(v)
            print("               %12.2f  %12.2f  %7.2f  %13.2f  %5.1f" % tuple(x * 1000 for x in (a, b, c, d, e)))
        if parts["a"]:
            med = {k: statistics.median(v) * 1000 for k, v in parts.items()}
            print("median:         %12.2f  %12.2f  %7.2f  %13.2f  %5.1f" % tuple(med[k] for k in "abcde"))
            print("hand-on = %.1f %% of the median reload" % (100.0 * med["c"] / med["e"]))
    finally:
        if run is not None and run.proc is not None and run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
        bench.cleanup()
        if notify is not None:
            notify.close()
        shutil.rmtree(tmp, ignore_errors=True)


def events(trace):
    for line in trace.splitlines():
        m = LINE.match(line)
        if m:
            yield int(m.group("tid")), float(m.group("ts")), m.group("event"), m.group("rest")


def reload_starts(trace, me, wrapper):
    return [ts for tid, ts, ev, rest in events(trace)
            if tid == me and ev == "signal_generate" and "sig=12 " in rest and " pid=%d " % wrapper in rest]


def pair(trace, me, wrapper, master):
    """[(bench's SIGUSR2 to the wrapper, the wrapper's exec, the wrapper's SIGUSR2 to the master)]"""
    rows = []
    cur = None
    for tid, ts, ev, rest in events(trace):
        if tid == me and ev == "signal_generate" and "sig=12 " in rest and " pid=%d " % wrapper in rest:
            cur = [ts, None, None]
        elif cur and tid == wrapper and ev == "sched_process_exec" and cur[1] is None:
            cur[1] = ts
        elif cur and tid == wrapper and ev == "signal_generate" and "sig=12 " in rest and " pid=%d " % master in rest:
            cur[2] = ts
            if cur[1] is not None:
                rows.append(tuple(cur))
            cur = None
    return rows


if __name__ == "__main__":
    main()
