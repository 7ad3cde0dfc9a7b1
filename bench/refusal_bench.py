#!/usr/bin/env python3
"""Refused connections through a service's life under a real systemd: Debian's own haproxy.service
against the wrapper's drop-in from the .deb, in master-worker and in foreground mode.

    python3 bench/refusal_bench.py            (root; `make bench-refusals` builds the .deb first)

Boots each Debian guest of BENCH_RF_SUITE (a list; default "bookworm trixie sid": systemd 252, 257
and 262 with haproxy 2.6, 3.0 and 3.2) in turn with systemd-nspawn as tests/e2e/run.sh does (same
cached roots, same lock) and runs bench/guest/refusal_events.py there: each event (a good
reload, a reload whose bind fails, SIGKILL of the serving haproxy or worker, of the master, of the
main process, `systemctl restart`, a package upgrade) BENCH_RF_RUNS times (default 3) under a client
opening a new connection every 10 ms with a 3 s timeout (tests/e2e/guest/prober.py).

Report: per guest, setup and event, refused and timed-out connections (totals and per run), resets
(a connection that a killed haproxy held), and the longest delay an answered client saw; written
between the bench:refusals markers of BENCHMARKS.md. Targets: the wrapper refuses and times out
nothing in every event, in both modes, in every guest. Exit 1 on a miss unless
BENCH_ALLOW_MISS=1, 2 on a setup error.
"""

import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import bench  # noqa: E402
import systemd_bench as sd  # noqa: E402

RUNS = bench.env_int("BENCH_RF_RUNS", 3)
SUITES = (os.environ.get("BENCH_RF_SUITE") or "bookworm trixie sid").split()
BEGIN = "<!-- bench:refusals:begin (written by bench/refusal_bench.py; edit outside these markers) -->"
END = "<!-- bench:refusals:end -->"
SETUPS = [("debian", "Debian's haproxy.service"), ("wrapper-mw", "wrapper, master-worker (-Ws)"),
          ("wrapper-fg", "wrapper, foreground (-x)")]
# QUOTED (master-worker only): a bind the wrapper leaves to haproxy (src/binds.rs), whose master
# pauses the serving listeners while it retries; the wrapper listens on its copies again, and a
# connection that comes in between is refused: at most one a run is what the design promises there.
QUOTED = "failing bind, quoted (left to haproxy)"
EVENTS = ["good reload", "failing bind", QUOTED, "SIGKILL of haproxy/worker", "SIGKILL of the master",
          "SIGKILL of the main process", "systemctl restart", "package upgrade"]
ONLY_MW = ("SIGKILL of the master", QUOTED)


def log(msg):
    sys.stderr.write("bench-refusals: %s\n" % msg)
    sys.stderr.flush()


def cell(rows):
    if not rows:
        return "—"
    refused = [r["refused"] for r in rows]
    timed = sum(r["timed_out"] for r in rows)
    reset = sum(r["reset"] for r in rows)
    text = "%d (%s)" % (sum(refused), " ".join(map(str, refused)))
    if timed:
        text += ", %d timed out" % timed
    if reset:
        text += ", %d reset" % reset
    return text + "; %d ms" % max(r["max_ms"] for r in rows)


def suite_report(suite, res):
    """One guest's table and checks; each check's label starts with the suite."""
    by = {}
    for r in res["results"]:
        by.setdefault((r["variant"], r["event"]), []).append(r)
    lines = [
        "### %s" % suite,
        "",
        "%s." % res.get("versions", "?"),
        "",
        "| event | " + " | ".join(label for _, label in SETUPS) + " |",
        "|---|" + "---|" * len(SETUPS),
    ]
    for e in EVENTS:
        lines.append("| %s | %s |" % (e, " | ".join(cell(by.get((v, e), [])) for v, _ in SETUPS)))
    lines.append("")
    checks = []
    for v, label in SETUPS[1:]:
        for e in EVENTS:
            rows = by.get((v, e), [])
            if not rows:
                continue
            if e == QUOTED:
                worst = max(r["refused"] for r in rows)
                bad = sum(r["timed_out"] + r["other"] for r in rows)
                checks.append((worst <= 1 and bad == 0, "%s, %s, %s: at most 1 refused a run (most: %d), none timed out: %d in %d runs"
                               % (suite, label, e, worst, bad, len(rows))))
                continue
            bad = sum(r["refused"] + r["timed_out"] + r["other"] for r in rows)
            checks.append((bad == 0, "%s, %s, %s: no connection refused or timed out: %d in %d runs" % (suite, label, e, bad, len(rows))))
    expected = sum(1 for v, _ in SETUPS for e in EVENTS
                   if not (e == "package upgrade" and v == "debian") and not (e in ONLY_MW and v != "wrapper-mw"))
    checks.append((len(by) == expected, "%s, every setup ran every event: %d of %d" % (suite, len(by), expected)))
    for ok, what in checks:
        lines.append("- %s %s" % ("PASS" if ok else "MISS", what))
    for e in res.get("errors", []):
        lines.append("- ERROR %s: %s" % (suite, e))
    return lines, checks


def report(runs, started, elapsed, commit):
    """`runs`: (suite, the guest's result, or None when it left none) in the order they ran."""
    lines = [
        "Run: %s UTC, %.0f s, `make bench-refusals`; commit %s." % (started.strftime("%Y-%m-%d %H:%M"), elapsed, commit),
        "Guests under systemd-nspawn, 2 CPUs shared with the host. A client opens a new connection every 10 ms "
        "(3 s timeout) through each event, %d runs per event; each cell: refused connections in total (per run), "
        "timed out and reset ones when any, and the longest an answered client waited. For Debian's unit the main "
        "process is haproxy's master (one row)." % RUNS,
    ]
    checks = []
    for suite, res in runs:
        lines.append("")
        if res is None:
            lines += ["### %s" % suite, "", "- MISS %s: the guest left no result" % suite]
            checks.append((False, "%s: the guest left no result" % suite))
            continue
        more, c = suite_report(suite, res)
        lines += more
        checks += c
    return "\n".join(lines), checks


def run_suite(suite, deb):
    """One guest: its result (the parsed result.json), or None once logged why. The run directory is
    kept when the guest left no result, an error or a miss, or with BENCH_RF_KEEP=1."""
    sd.SUITE = suite
    root, lockf = sd.guest_root_and_lock(suite, log)
    if root is None:
        return None
    rundir = tempfile.mkdtemp(prefix="hsw-bench-refusals-%s." % suite)
    keep = os.environ.get("BENCH_RF_KEEP", "") not in ("", "0")
    try:
        os.makedirs(os.path.join(rundir, "out"))
        os.makedirs(os.path.join(rundir, "deb"))
        shutil.copy(deb, os.path.join(rundir, "deb"))
        os.makedirs(os.path.join(rundir, "guest"))
        shutil.copy(os.path.join(HERE, "guest", "refusal_events.py"), os.path.join(rundir, "guest"))
        shutil.copy(os.path.join(ROOT, "tests", "e2e", "guest", "prober.py"), os.path.join(rundir, "guest"))
        with open(os.path.join(rundir, "settings.json"), "w") as f:
            json.dump({"runs": RUNS}, f)
        with open(os.path.join(HERE, "guest", "bench-run.service")) as f:
            unit = f.read().replace("@GUEST_TIMEOUT@", str(max(60, sd.TIMEOUT - 60)))
        unit = unit.replace("/bench/guest/reload_bench.py", "/bench/guest/refusal_events.py")
        with open(os.path.join(rundir, "bench-run.service"), "w") as f:
            f.write(unit)
        log("guest %s, package %s, %d runs per event; run dir %s" % (suite, os.path.basename(deb), RUNS, rundir))
        _trace, _err, rc = sd.run_guest(root, rundir)
        try:
            with open(os.path.join(rundir, "out", "result.json")) as f:
                res = json.load(f)
        except (OSError, ValueError) as e:
            keep = True
            log("the %s guest left no result (nspawn exit %s: %s); console: %s/console.log" % (suite, rc, e, rundir))
            return None
        _, checks = suite_report(suite, res)
        keep = keep or bool(res.get("errors")) or not all(ok for ok, _ in checks)
        return res
    finally:
        if keep:
            log("run directory kept: %s" % rundir)
        else:
            shutil.rmtree(rundir, ignore_errors=True)
        lockf.close()


def main():
    if os.geteuid() != 0:
        log("must run as root (systemd-nspawn)")
        return 2
    for tool in ("systemd-nspawn", "mmdebstrap", "unshare", "timeout"):
        if shutil.which(tool) is None:
            log("%s not found; install the test dependencies: tests/install-deps.sh" % tool)
            return 2
    unknown = [s for s in SUITES if s not in ("bookworm", "trixie", "sid")]
    if unknown or not SUITES:
        log("BENCH_RF_SUITE: unknown guest %s (known: bookworm trixie sid)" % " ".join(unknown or ["(none)"]))
        return 2
    deb = os.environ.get("BENCH_RF_DEB") or sd.newest_deb()
    if not deb or not os.path.isfile(deb):
        log("no package: run `make deb` (or set BENCH_RF_DEB)")
        return 2
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    runs = [(suite, run_suite(suite, deb)) for suite in SUITES]
    elapsed = time.monotonic() - t0
    commit = subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%h %s"], capture_output=True, text=True).stdout.strip() or "?"
    text, checks = report(runs, started, elapsed, commit)

    def write(text):
        bench.write_block(sd.RESULTS_FILE, BEGIN, END, "Latest results: refused connections", text)
    errors = ["%s: %s" % (suite, e) for suite, res in runs if res for e in res.get("errors", [])]
    rc, _missed = sd.conclude(text, checks, errors, write, "the run directories named above")
    return rc


if __name__ == "__main__":
    sys.exit(main())
