#!/usr/bin/env python3
"""Where the wrapper's master-worker reload time goes, seen by the kernel (needs root and tracefs).

    python3 bench/trace_handoff.py [RELOADS] [--load]        (default 20 reloads, no load)

Starts the wrapper in master-worker mode the way `make bench` does (same generated config, pinned to
CPU 0, notify socket of ours; with --load, the bench's wrk load on CPU 1), reloads it RELOADS times, and
traces with ftrace, restricted to the bench, the wrapper and the master: `signal:signal_generate`,
`sched:sched_process_exec` and the entries of `sendmsg`/`sendto`, on CLOCK_MONOTONIC. Per reload:

    signal->exec         the bench's SIGUSR2 to the wrapper -> the wrapper's re-exec
    exec->master         the re-exec -> the wrapper's SIGUSR2 to the haproxy master
    hand-on              the sum: what the wrapper puts in front of haproxy's own reload
    master->its READY    the master's SIGUSR2 -> the master's last send before the wrapper's last send
                         (its READY=1 to the wrapper)
    relay                -> the wrapper's last send (its READY=1 to the bench)
    total                the bench's signal -> the wrapper's READY=1

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
EVENTS = "signal:signal_generate sched:sched_process_exec syscalls:sys_enter_sendmsg syscalls:sys_enter_sendto"
LINE = re.compile(r"^\s*(?P<comm>.+?)-(?P<tid>\d+)\s+\[\d+\]\s+\S+\s+(?P<ts>\d+\.\d+):\s+(?P<event>\w+)[:(]\s*(?P<rest>.*)$")


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
    args = [a for a in sys.argv[1:] if a != "--load"]
    with_load = "--load" in sys.argv[1:]
    reloads = int(args[0]) if args else 20
    if os.geteuid() != 0:
        raise SystemExit("trace_handoff: needs root (ftrace)")
    bench.preflight(["wrapper-mw"])
    bench.set_child_subreaper()
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {bench.CPU_LOAD})
    tmp = tempfile.mkdtemp(prefix="haproxy-trace.")
    notify = None
    run = None
    load = None
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
        if with_load:
            load = bench.Load(tmp, port, os.path.join(tmp, "wrk.out"))
            load.wait_first_response()
        with Tracefs() as tr:
            tr.write("set_event_pid", "%d %d %d" % (os.getpid(), wrapper, master))
            tr.write("tracing_on", "1")
            for _ in range(reloads):
                run.reload()
            tr.write("tracing_on", "0")
            trace = tr.read("trace")
        if load is not None:
            w = load.stop()
            load = None
            print("load: %d requests, %d failed" % (w["requests"], w["failed"]))
        run.stop()
        report(list(events(trace)), os.getpid(), wrapper, master, reloads, with_load)
    finally:
        if load is not None and load.proc.poll() is None:
            load.proc.kill()
            load.proc.wait()
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


def is_sig(ev, rest, target):
    return ev == "signal_generate" and "sig=12 " in rest and " pid=%d " % target in rest


def is_send(ev):
    return ev in ("sys_sendmsg", "sys_sendto", "sys_enter_sendmsg", "sys_enter_sendto")


def report(evs, me, wrapper, master, reloads, with_load):
    """One row per reload window (from one bench SIGUSR2 to the next)."""
    starts = [i for i, (tid, _ts, ev, rest) in enumerate(evs) if tid == me and is_sig(ev, rest, wrapper)]
    if len(starts) != reloads:
        print("trace_handoff: %d reloads but %d traced signals" % (reloads, len(starts)))
    cols = ("signal->exec", "exec->master", "hand-on", "master->its READY", "relay", "total")
    print("wrapper master-worker reload, %s, ms per reload:" % ("under the bench's wrk load" if with_load else "no load"))
    print("  " + "  ".join("%17s" % c for c in cols))
    rows = []
    for n, i in enumerate(starts):
        window = evs[i:starts[n + 1]] if n + 1 < len(starts) else evs[i:]
        t_sig = window[0][1]
        t_exec = next((ts for tid, ts, ev, _r in window if tid == wrapper and ev == "sched_process_exec"), None)
        t_master = next((ts for tid, ts, ev, r in window if tid == wrapper and is_sig(ev, r, master)), None)
        wsends = [ts for tid, ts, ev, _r in window if tid == wrapper and is_send(ev) and t_master and ts > t_master]
        t_wready = wsends[-1] if wsends else None
        msends = [ts for tid, ts, ev, _r in window
                  if tid == master and is_send(ev) and t_wready and t_master and t_master < ts < t_wready]
        t_mready = msends[-1] if msends else None
        if None in (t_exec, t_master, t_wready, t_mready):
            continue
        row = (t_exec - t_sig, t_master - t_exec, t_master - t_sig, t_mready - t_master, t_wready - t_mready,
               t_wready - t_sig)
        rows.append(row)
        print("  " + "  ".join("%17.2f" % (x * 1000) for x in row))
    if rows:
        med = [statistics.median(col) * 1000 for col in zip(*rows)]
        print("median " + "  ".join("%17.2f" % x for x in med)[5:])
        print("wrapper's share (hand-on + relay): %.2f ms = %.1f %% of the median reload" % (
            med[2] + med[4], 100.0 * (med[2] + med[4]) / med[5]))
    print("(master->its READY: the master's last send before the wrapper's last one, i.e. its READY=1 to the\n"
          " wrapper; relay: from there to the wrapper's READY=1 to the bench; total: signal -> that send)")


if __name__ == "__main__":
    main()
