#!/usr/bin/env python3
"""Tests of bench.py's pure parts (no haproxy, no wrk): python3 bench/test_bench.py"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import soak  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "guest"))
import refusal_bench  # noqa: E402
import reload_bench  # noqa: E402
import systemd_bench  # noqa: E402

WRK_OUTPUT = """\
Running 60m test @ http://127.0.0.1:40000/
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   150.00us   50.00us   2.00ms   90.00%
    Req/Sec     2.90k   100.00     3.10k    70.00%
  17553 requests in 6.02s, 1.23MB read
  Socket errors: connect 2, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   2915.12
Transfer/sec:    209.00KB
"""


class ParseWrk(unittest.TestCase):
    def test_errors_and_non_2xx(self):
        r = bench.parse_wrk(WRK_OUTPUT)
        self.assertEqual(r["requests"], 17553)
        self.assertEqual((r["connect"], r["read"], r["write"], r["timeout"], r["non2xx"]), (2, 3, 0, 1, 4))
        self.assertEqual(r["failed"], 10)

    def test_clean_run(self):
        text = "\n".join(line for line in WRK_OUTPUT.splitlines() if "errors" not in line and "Non-2xx" not in line)
        r = bench.parse_wrk(text)
        self.assertEqual((r["requests"], r["failed"]), (17553, 0))

    def test_garbage_is_a_run_failure(self):
        with self.assertRaises(bench.RunFailed):
            bench.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


class Tracked(unittest.TestCase):
    # pid: (ppid, comm, state)
    def test_native_master_worker_tracks_workers(self):
        desc = {11: (10, "haproxy", "S"), 12: (10, "haproxy", "Z")}
        self.assertEqual(sorted(bench.tracked("native", desc, 10)), [11, 12])

    def test_wrapper_master_worker_skips_the_master(self):
        desc = {2: (1, "haproxy", "S"), 3: (2, "haproxy", "S"), 4: (2, "haproxy", "S")}
        self.assertEqual(sorted(bench.tracked("wrapper-mw", desc, 1)), [3, 4])

    def test_wrapper_foreground_tracks_every_haproxy_not_the_sentinel(self):
        desc = {2: (1, "haproxy", "S"), 3: (1, "haproxy", "S"), 5: (1, "haproxy-systemd", "S")}
        self.assertEqual(sorted(bench.tracked("wrapper-fg", desc, 1)), [2, 3])


class ProcTable(unittest.TestCase):
    def test_finds_own_child(self):
        import subprocess
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        try:
            desc = bench.ProcTable().descendants(os.getpid(), full=True)
            self.assertIn(child.pid, desc)
            self.assertEqual(desc[child.pid][0], os.getpid())
        finally:
            child.stdin.close()
            child.wait()

    def test_stat_gives_the_parent(self):
        st = bench.ProcTable.stat(os.getpid())
        self.assertEqual(st[0], os.getppid())


class Statistics(unittest.TestCase):
    def test_nearest_rank_percentile(self):
        values = list(range(1, 101))
        self.assertEqual(bench.pct(values, 95), 95)
        self.assertEqual(bench.pct(values, 100), 100)
        self.assertEqual(bench.pct([7], 95), 7)
        self.assertIsNone(bench.pct([], 95))

    def test_ratio_interval_contains_the_ratio(self):
        a = [[1.0, 1.1, 1.2], [1.1, 1.2, 1.3], [1.0, 1.05, 1.1]]
        b = [[1.0, 1.0, 1.1], [0.9, 1.0, 1.1], [1.0, 1.1, 1.2]]
        lo, hi = bench.ratio_interval(a, b)
        self.assertLessEqual(lo, hi)
        self.assertTrue(lo <= 1.1 <= hi)
        self.assertIsNone(bench.ratio_interval(a[:1], b))


    def test_ratio_target(self):
        # met: at or below the target, or the target inside the interval
        self.assertTrue(bench.ratio_target_met(0.97, (0.99, 1.02), 1.00))
        self.assertTrue(bench.ratio_target_met(1.00, None, 1.00))
        self.assertTrue(bench.ratio_target_met(1.02, (0.98, 1.05), 1.00))
        self.assertTrue(bench.ratio_target_met(1.02, (1.00, 1.05), 1.00))
        # missed: above, and the interval lies entirely above
        self.assertFalse(bench.ratio_target_met(1.02, (1.004, 1.05), 1.00))
        self.assertFalse(bench.ratio_target_met(1.02, None, 1.00))


class Results(unittest.TestCase):
    def test_rewrites_only_between_markers(self):
        import tempfile
        with tempfile.NamedTemporaryFile("w+", suffix=".md", delete=False) as f:
            f.write("# B\n\nhand text\n\n" + bench.BEGIN + "\nold\n" + bench.END + "\n\ntail\n")
        try:
            saved = bench.RESULTS_FILE
            bench.RESULTS_FILE = f.name
            bench.write_results("new table")
            with open(f.name) as g:
                doc = g.read()
            self.assertIn("hand text", doc)
            self.assertIn("new table", doc)
            self.assertNotIn("old", doc)
            self.assertTrue(doc.endswith("tail\n"))
        finally:
            bench.RESULTS_FILE = saved
            os.unlink(f.name)


def sample(rss=2200, anon=150, fds=8, procs=2, zombies=0):
    return {"rss": rss, "anon": anon, "file": rss - anon, "pss": 900, "fds": fds, "procs": procs,
            "zombies": zombies, "cpu_ms": 1.0}


def soak_run(n=10, **last):
    samples = [sample() for _ in range(n)]
    samples[-1] = sample(**last)
    return {"error": None, "reloads": [0.1] * n, "before": sample(), "samples": samples, "defects": [],
            "wrk": {"requests": 1000, "failed": 0, "connect": 0, "read": 0, "write": 0, "timeout": 0, "non2xx": 0},
            "exit": 0, "left": 0}


class Soak(unittest.TestCase):
    def test_picked_samples(self):
        pts = soak.picked("b", list(range(1, 11)), 3)
        self.assertEqual([i for i, _s in pts], [0, 3, 6, 9, 10])
        self.assertEqual(pts[0][1], "b")
        self.assertEqual(pts[-1][1], 10)
        self.assertEqual([i for i, _s in soak.picked("b", list(range(1, 7)), 3)], [0, 3, 6])

    def verdicts(self, r, n=10):
        return {text.split(":")[0]: ok for ok, text in soak.soak_checks(r, n, 5)}

    def test_clean_soak_passes(self):
        self.assertTrue(all(ok for ok, _t in soak.soak_checks(soak_run(), 10, 5)))

    def test_a_descriptor_more_at_the_end_is_a_miss(self):
        v = self.verdicts(soak_run(fds=9))
        self.assertFalse(v["descriptors flat"])
        self.assertTrue(v["children (descendants) flat"])

    def test_a_child_more_is_a_miss(self):
        self.assertFalse(self.verdicts(soak_run(procs=3))["children (descendants) flat"])

    def test_a_step_during_the_warm_up_is_not_growth(self):
        r = soak_run()
        r["samples"] = [sample(anon=210) for _ in range(10)]
        v = self.verdicts(r)
        self.assertTrue(v["anonymous RSS flat (growth after reload 5 <= 32 KiB)"])
        r["samples"][-1] = sample(anon=210 + soak.ANON_GROWTH_KIB + 4)
        self.assertFalse(self.verdicts(r)["anonymous RSS flat (growth after reload 5 <= 32 KiB)"])

    def test_rss_growth_bounds(self):
        self.assertTrue(self.verdicts(soak_run(anon=150 + soak.ANON_GROWTH_KIB))["anonymous RSS flat (growth after reload 5 <= 32 KiB)"])
        self.assertFalse(self.verdicts(soak_run(anon=150 + soak.ANON_GROWTH_KIB + 4))["anonymous RSS flat (growth after reload 5 <= 32 KiB)"])
        self.assertFalse(self.verdicts(soak_run(rss=2200 + soak.RSS_GROWTH_KIB + 4))["VmRSS flat (growth after reload 5 <= 256 KiB)"])
        self.assertTrue(self.verdicts(soak_run(rss=2100))["VmRSS flat (growth after reload 5 <= 256 KiB)"])

    def test_failed_connections_and_short_series_are_misses(self):
        r = soak_run()
        r["wrk"]["failed"] = r["wrk"]["connect"] = 1
        self.assertFalse(self.verdicts(r)["zero failed connections"])
        self.assertFalse(self.verdicts(soak_run(), n=11)["reloads done"])
        r = soak_run()
        r["error"] = "reload not done within 30 s"
        self.assertFalse(all(ok for ok, _t in soak.soak_checks(r, 10, 5)))

    def test_defects_are_misses(self):
        r = soak_run()
        r["defects"] = ["the wrapper reported a failed reload: failed after 3 ms"]
        self.assertFalse(all(ok for ok, _t in soak.soak_checks(r, 10, 5)))


class SystemdBench(unittest.TestCase):
    def test_large_config_counts(self):
        cfg = systemd_bench.large_config(30, 5, 200)
        lines = cfg.splitlines()
        self.assertEqual(sum(1 for l in lines if l.startswith("backend ")), 30)
        self.assertEqual(sum(1 for l in lines if l.strip().startswith("server ")), 150)
        self.assertFalse(any(" check" in l for l in lines if l.strip().startswith("server ")))
        self.assertEqual(sum(1 for l in lines if "crt-list /etc/haproxy/bench/crt-list.txt" in l), 1)
        self.assertIn('string "@TAG@"', cfg)
        self.assertNotIn("crt-list", systemd_bench.large_config(3, 1, 0))
        ports = [l.split()[2] for l in lines if l.strip().startswith("server ")]
        self.assertEqual(len(set(ports)), 150)
        self.assertTrue(all(p.startswith("127.0.0.1:") for p in ports))

    @staticmethod
    def runs(variant, walls_by_run, rc=0):
        return [{"variant": variant, "start": 0.3, "load_after": "1.0 1.0 1.0",
                 "reloads": [{"wall": w, "served": w + 0.1, "settled": w + 0.2, "sync": True, "rc": rc, "err": ""}
                             for w in walls]} for walls in walls_by_run]

    def test_summarize_and_compare(self):
        runs = self.runs("dist", [[0.5, 0.6, 0.7], [0.5, 0.5, 0.6]]) + self.runs("wrapper", [[0.6, 0.6, 0.7], [0.6, 0.7, 0.8]])
        runs.append({"variant": "wrapper", "error": "RuntimeError: boom", "reloads": []})
        s = systemd_bench.summarize(runs, ["dist", "wrapper"])
        self.assertAlmostEqual(s["dist"]["wall"], 0.55)
        self.assertAlmostEqual(s["wrapper"]["wall"], 0.65)
        self.assertEqual((s["wrapper"]["runs"], s["wrapper"]["ok"], s["wrapper"]["errors"]), (3, 2, ["RuntimeError: boom"]))
        r, ci = systemd_bench.compare(s, "dist", "wrapper")
        self.assertAlmostEqual(r, 0.65 / 0.55)
        self.assertTrue(ci[0] <= r <= ci[1])
        self.assertIsNone(systemd_bench.compare(s, "dist", "wrapper-nocheck"))

    def test_failed_reloads_are_counted_not_timed(self):
        s = systemd_bench.summarize(self.runs("dist", [[0.5, 0.6]]) + self.runs("dist", [[9.0]], rc=1), ["dist"])
        self.assertEqual((s["dist"]["reloads"], s["dist"]["failed"]), (3, 1))
        self.assertAlmostEqual(s["dist"]["wall"], 0.55)

    TRACE = """\
# tracer: nop
 haproxy-systemd-10 [000] .....  100.000000: signal_generate: sig=12 errno=0 code=-6 comm=haproxy pid=11 grp=1 res=0
 haproxy-systemd-10 [000] .....  100.001000: sys_sendto(fd: 3, buff: 1, len: 20, flags: 4000, addr: 2, addr_len: 6e)
         haproxy-11 [001] .....  100.010000: sys_sendmsg(fd: 7, msg: 7ffd, flags: 0)
 haproxy-systemd-10 [000] .....  100.010500: sys_recvmsg(fd: 5, msg: 7ffd, flags: 40)
         haproxy-11 [001] .....  100.200000: sys_sendmsg(fd: 7, msg: 7ffd, flags: 0)
         haproxy-11 [001] .....  100.200050: sys_sendto(fd: 11, buff: 1, len: 4, flags: 0, addr: 0, addr_len: 0)
 haproxy-systemd-10 [000] .....  100.200100: sys_write(fd: 2, buf: 1, count: 40)
 haproxy-systemd-10 [000] .....  100.200200: sys_write(fd: 2, buf: 1, count: 40)
 haproxy-systemd-10 [000] .....  100.205000: sys_recvmsg(fd: 5, msg: 7ffd, flags: 40)
 haproxy-systemd-10 [000] .....  100.205500: sys_sendto(fd: 3, buff: 1, len: 20, flags: 4000, addr: 2, addr_len: 6e)
 haproxy-systemd-10 [000] .....  100.206000: sys_write(fd: 2, buf: 1, count: 40)
 haproxy-systemd-10 [000] .....  101.000000: signal_generate: sig=12 errno=0 code=-6 comm=haproxy pid=11 grp=1 res=0
         haproxy-11 [001] .....  101.100000: sys_sendmsg(fd: 7, msg: 7ffd, flags: 0)
 haproxy-systemd-10 [000] .....  101.100300: sys_recvmsg(fd: 5, msg: 7ffd, flags: 40)
 haproxy-systemd-10 [000] .....  101.100400: sys_sendto(fd: 3, buff: 1, len: 20, flags: 4000, addr: 2, addr_len: 6e)
"""

    def test_relay_delays_from_a_trace(self):
        evs = list(systemd_bench.trace_events(self.TRACE))
        self.assertEqual(len(evs), 15)
        rows = systemd_bench.relay_delays(evs, 10, 11)
        self.assertEqual(len(rows), 2)
        self.assertAlmostEqual(rows[0]["delay"], 0.005, places=6)
        self.assertEqual(rows[0]["writes"], 2)
        self.assertAlmostEqual(rows[0]["relay_to_systemd"], 0.0055, places=6)
        self.assertAlmostEqual(rows[0]["sig_to_ready"], 0.2055, places=6)
        self.assertEqual(rows[0]["writes_in_window"], 3)
        self.assertAlmostEqual(rows[1]["delay"], 0.0003, places=6)
        self.assertEqual(rows[1]["writes"], 0)

    def test_journal_suppressed(self):
        text = ("Nov 29 08:33:26 g systemd-journald[17]: Suppressed 80334 messages from haproxy.service\n"
                "Nov 29 08:33:27 g systemd-journald[17]: Suppressed 5 messages from other.service\n"
                "Nov 29 08:33:56 g systemd-journald[17]: Suppressed 6 messages from haproxy.service\n")
        self.assertEqual(systemd_bench.journal_suppressed(text), (2, 80340))
        self.assertEqual(systemd_bench.journal_suppressed(""), (0, 0))


DROPIN_NOW = """[Service]
ExecStartPre=/usr/sbin/haproxy -Ws -c -f $CONFIG $EXTRAOPTS $OPTIONS
ExecReload=
ExecReload=/usr/sbin/haproxy -Ws -c -f $CONFIG $EXTRAOPTS $OPTIONS
ExecReload=/bin/kill -USR2 $MAINPID
ProtectSystem=full
"""
DROPIN_WAIT = DROPIN_NOW.replace("ExecReload=/bin/kill -USR2 $MAINPID\n", "ExecReload=/bin/kill -USR2 $MAINPID\n"
                                 "ExecReload=/usr/sbin/haproxy-systemd-wrapper --wait-reload $MAINPID\n")


def refusal_row(variant, event, refused=0, timed_out=0, reset=0, max_ms=40, run=1):
    return {"variant": variant, "event": event, "run": run, "ok": 100, "refused": refused,
            "timed_out": timed_out, "reset": reset, "other": 0, "max_ms": max_ms}


def refusal_results(bad=None):
    bad = bad or {}
    rows = []
    for v, _ in refusal_bench.SETUPS:
        for e in refusal_bench.EVENTS:
            if (e == "package upgrade" and v == "debian") or (e in refusal_bench.ONLY_MW and v != "wrapper-mw"):
                continue
            rows.append(refusal_row(v, e, refused=bad.get((v, e), 0)))
    return {"results": rows, "errors": [], "versions": "test"}


class RefusalBench(unittest.TestCase):
    def report(self, res):
        return self.report_runs([("trixie", res)])

    def report_runs(self, runs):
        import datetime
        return refusal_bench.report(runs, datetime.datetime(2026, 1, 1), 10, "abc test")

    def test_everything_zero_passes(self):
        text, checks = self.report(refusal_results({("debian", "systemctl restart"): 6}))
        self.assertTrue(all(ok for ok, _ in checks), checks)
        self.assertIn("| systemctl restart | 6 (6); 40 ms | 0 (0); 40 ms | 0 (0); 40 ms |", text)
        self.assertIn("| package upgrade | — |", text)

    def test_a_refusal_of_the_wrapper_is_a_miss_in_every_event_and_mode(self):
        bad = {("wrapper-fg", "SIGKILL of haproxy/worker"): 3, ("wrapper-mw", "failing bind"): 205,
               ("debian", "failing bind"): 205}
        text, checks = self.report(refusal_results(bad))
        missed = sorted(what for ok, what in checks if not ok)
        self.assertEqual(len(missed), 2, missed)
        self.assertIn("foreground (-x), SIGKILL of haproxy/worker", missed[0])
        self.assertIn("master-worker (-Ws), failing bind: no connection refused or timed out: 205", missed[1])
        self.assertNotIn("not a target", text)

    def test_a_bind_left_to_haproxy_may_refuse_one_connection_a_run_not_two(self):
        q = refusal_bench.QUOTED
        text, checks = self.report(refusal_results({("wrapper-mw", q): 1}))
        self.assertTrue(all(ok for ok, _ in checks), checks)
        self.assertIn("| %s | — | 1 (1); 40 ms | — |" % q, text)
        _, checks = self.report(refusal_results({("wrapper-mw", q): 2}))
        self.assertEqual([what for ok, what in checks if not ok],
                         ["trixie, wrapper, master-worker (-Ws), %s: at most 1 refused a run (most: 2), none timed out: 0 in 1 runs" % q])

    def test_a_missing_event_is_a_miss(self):
        res = refusal_results()
        res["results"] = [r for r in res["results"] if r["event"] != "systemctl restart"]
        _, checks = self.report(res)
        self.assertIn(False, [ok for ok, _ in checks])

    def test_every_guest_has_its_table_and_a_miss_names_its_guest(self):
        runs = [("bookworm", refusal_results()), ("trixie", refusal_results({("wrapper-mw", "systemctl restart"): 2})),
                ("sid", refusal_results())]
        text, checks = self.report_runs(runs)
        for suite in ("bookworm", "trixie", "sid"):
            self.assertIn("### %s\n" % suite, text)
        self.assertEqual(text.count("| event | "), 3)
        missed = [what for ok, what in checks if not ok]
        self.assertEqual(missed, ["trixie, wrapper, master-worker (-Ws), systemctl restart: "
                                  "no connection refused or timed out: 2 in 1 runs"])
        self.assertIn("sid, every setup ran every event: 19 of 19", [what for ok, what in checks if ok])

    def test_a_guest_without_a_result_is_a_miss(self):
        text, checks = self.report_runs([("bookworm", None), ("sid", refusal_results())])
        self.assertEqual([what for ok, what in checks if not ok], ["bookworm: the guest left no result"])
        self.assertIn("- MISS bookworm: the guest left no result", text)


class GuestVariants(unittest.TestCase):
    CHECK = "ExecReload=/usr/sbin/haproxy -Ws -c -f $CONFIG $EXTRAOPTS $OPTIONS"
    KILL = "ExecReload=/bin/kill -USR2 $MAINPID"
    WAIT = "ExecReload=/usr/sbin/haproxy-systemd-wrapper --wait-reload $MAINPID"

    def test_drop_in_as_on_main(self):
        lines, nocheck = reload_bench.reload_lines(DROPIN_NOW)
        self.assertEqual(lines, [self.CHECK, self.KILL])
        self.assertEqual(nocheck, [self.KILL])
        v = lambda name: reload_bench.variant_lines(name, lines, nocheck, False)  # noqa: E731
        self.assertIsNone(v("wrapper"))
        self.assertEqual(v("wrapper-nocheck"), [self.KILL])
        self.assertEqual(v("wrapper-wait"), [self.CHECK, self.KILL, self.WAIT])
        self.assertEqual(v("wrapper-wait-nocheck"), [self.KILL, self.WAIT])

    def test_drop_in_with_the_wait_line(self):
        lines, nocheck = reload_bench.reload_lines(DROPIN_WAIT)
        self.assertEqual(lines, [self.CHECK, self.KILL, self.WAIT])
        self.assertEqual(nocheck, [self.KILL, self.WAIT])
        self.assertEqual(reload_bench.variant_lines("wrapper-nocheck", lines, nocheck, True), [self.KILL, self.WAIT])
        self.assertIsNone(reload_bench.variant_lines("wrapper", lines, nocheck, True))
        # never a second wait line
        self.assertEqual(reload_bench.variant_lines("wrapper-wait-nocheck", lines, nocheck, True), [self.KILL, self.WAIT])


if __name__ == "__main__":
    unittest.main()
