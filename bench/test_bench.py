#!/usr/bin/env python3
"""Tests of bench.py's pure parts (no haproxy, no wrk): python3 bench/test_bench.py"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

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


if __name__ == "__main__":
    unittest.main()
