#!/usr/bin/env python3
"""Runs in the guest (bench/refusal_bench.py boots it): the events of a service's life under a
client that opens a new connection every 10 ms (3 s timeout, tests/e2e/guest/prober.py), with
Debian's own haproxy.service and then with the wrapper's drop-in (master-worker and foreground
mode). Per event and run: refused, timed out, reset, the longest answered attempt.

Input: /bench/settings.json ({"runs": N}), /bench/deb/*.deb, /bench/guest/prober.py.
Output: /bench/out/result.json {"results": [...], "errors": [...], "versions": "..."} and
/bench/out/journal.txt; then the unit powers the guest off.
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

OUT = "/bench/out"
URL_PORT = 8080
PROBER = "/bench/guest/prober.py"
GLOBAL = """global
	log /dev/log	local0
	chroot /var/lib/haproxy
	stats socket /run/haproxy/admin.sock mode 660 level admin expose-fd listeners
	stats timeout 30s
	user haproxy
	group haproxy
	daemon

defaults
	mode	http
	timeout connect 5000
	timeout client  50000
	timeout server  50000

frontend bench
	bind 127.0.0.1:8080
	http-request return status 200 content-type text/plain string "%s"
"""
errors = []


def sh(*argv, timeout=120, check=False):
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError("%s: exit %d: %s" % (" ".join(argv), p.returncode, p.stderr[-500:]))
    return p


def prop(name):
    return sh("systemctl", "show", "--value", "-p", name, "haproxy").stdout.strip()


def write_cfg(body, extra=""):
    with open("/etc/haproxy/haproxy.cfg.tmp", "w") as f:
        f.write(GLOBAL % body + extra)
    os.rename("/etc/haproxy/haproxy.cfg.tmp", "/etc/haproxy/haproxy.cfg")


def serves():
    return sh("curl", "-fsS", "--max-time", "3", "-o", "/dev/null", "http://127.0.0.1:%d/" % URL_PORT).returncode == 0


def wait(cond, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def is_haproxy(pid):
    try:
        return os.readlink("/proc/%d/exe" % pid) == "/usr/sbin/haproxy"
    except OSError:
        return False


class Prober:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="probe.")
        self.proc = subprocess.Popen([sys.executable, PROBER, "127.0.0.1", str(URL_PORT), self.dir, "10", "3", "120"])
        if not wait(lambda: os.path.exists(os.path.join(self.dir, "ready")), 10):
            raise RuntimeError("the prober got no answer before the event")

    def answered(self):
        try:
            with open(os.path.join(self.dir, "progress")) as f:
                return int(f.read())
        except (OSError, ValueError):
            return 0

    def stop(self):
        open(os.path.join(self.dir, "stop"), "w").close()
        self.proc.wait(timeout=15)
        with open(os.path.join(self.dir, "result")) as f:
            fields = dict(kv.split("=") for kv in f.read().split())
        shutil.rmtree(self.dir, ignore_errors=True)
        return {k: int(v) for k, v in fields.items()}


def probed(variant, event, run, action):
    """Runs `action` under the prober until the service serves again and 100 more probes were answered."""
    p = Prober()
    t0 = time.monotonic()
    try:
        action()
    except Exception as e:  # noqa: BLE001 - reported with the result
        errors.append("%s / %s / run %d: %s" % (variant, event, run, e))
    wait(serves, 30)
    target = p.answered() + 100
    wait(lambda: p.answered() >= target, 15)
    r = p.stop()
    r.update(variant=variant, event=event, run=run, seconds=round(time.monotonic() - t0, 2))
    print("%-11s %-28s run %d: %s" % (variant, event, run, r), flush=True)
    return r


def steady(variant):
    """Active, serving, and in master-worker setups one worker left."""
    def ok():
        if prop("ActiveState") != "active" or not serves():
            return False
        main = int(prop("MainPID") or 0)
        if variant == "debian":
            return len(children(main)) == 1
        kids = [c for c in children(main) if is_haproxy(c)]
        if variant == "wrapper-mw":
            return len(kids) == 1 and len(children(kids[0])) == 1
        return len(kids) == 1
    if not wait(ok, 60):
        errors.append("%s: not steady after 60 s (ActiveState %s)" % (variant, prop("ActiveState")))


def processes(variant):
    """(worker or foreground haproxy, master or None, main pid)."""
    main = int(prop("MainPID") or 0)
    if variant == "debian":
        return max(children(main)), main, main
    kids = [c for c in children(main) if is_haproxy(c)]
    if variant == "wrapper-mw":
        return max(children(kids[0])), kids[0], main
    return kids[0], None, main


def gone(pid):
    """Reaped, or a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(") ", 1)[1][0] == "Z"
    except (OSError, IndexError):
        return True


def kill_and_wait(pid):
    os.kill(pid, 9)
    wait(lambda: gone(pid), 10)


def main_killed():
    main = int(prop("MainPID"))
    os.kill(main, 9)
    wait(lambda: prop("ActiveState") == "active" and prop("MainPID") not in ("0", str(main)), 30)


QUOTED = "failing bind, quoted (left to haproxy)"


def events(variant, runs, deb):
    results = []
    n = 0

    def reload():
        sh("systemctl", "reload", "haproxy", timeout=60)

    def good():
        nonlocal n
        n += 1
        write_cfg("bench-%d" % n)
        reload()

    def failing():
        write_cfg("bench-fail", "frontend unbindable\n\tbind 192.0.2.1:8082\n")
        reload()

    def failing_quoted():
        # Quoted: the wrapper leaves the bind to haproxy (src/binds.rs), whose master pauses the
        # serving listeners while it retries; the wrapper listens on its copies again.
        write_cfg("bench-fail", "frontend unbindable\n\tbind \"192.0.2.1:8082\"\n")
        reload()

    plan = [("good reload", good), ("failing bind", failing)]
    if variant == "wrapper-mw":
        plan.append((QUOTED, failing_quoted))
    plan.append(("SIGKILL of haproxy/worker", lambda: kill_and_wait(processes(variant)[0])))
    if variant == "wrapper-mw":
        plan.append(("SIGKILL of the master", lambda: kill_and_wait(processes(variant)[1])))
    plan.append(("SIGKILL of the main process", main_killed))
    plan.append(("systemctl restart", lambda: sh("systemctl", "restart", "haproxy", timeout=60, check=True)))
    if variant != "debian":
        plan.append(("package upgrade", lambda: sh("apt-get", "install", "-y", "--allow-downgrades", "--reinstall", deb, timeout=300, check=True)))
    for event, action in plan:
        for run in range(1, runs + 1):
            write_cfg("bench-%d" % n)
            sh("systemctl", "reset-failed", "haproxy")
            steady(variant)
            results.append(probed(variant, event, run, action))
            if event.startswith("failing bind"):
                write_cfg("bench-%d" % n)
                reload()
    return results


def main():
    os.makedirs(OUT, exist_ok=True)
    with open("/bench/settings.json") as f:
        settings = json.load(f)
    runs = settings.get("runs", 3)
    deb = glob.glob("/bench/deb/*.deb")[0]
    versions = "%s, %s, %s" % (
        sh("sh", "-c", ". /etc/os-release; echo $PRETTY_NAME").stdout.strip(),
        sh("systemctl", "--version").stdout.splitlines()[0],
        sh("haproxy", "-v").stdout.splitlines()[0])
    results = []
    try:
        # Debian's own unit first, as installed with the haproxy package.
        write_cfg("bench-0")
        sh("systemctl", "restart", "haproxy", timeout=60, check=True)
        results += events("debian", runs, deb)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        p = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", deb], capture_output=True, text=True, env=env, timeout=300)
        if p.returncode != 0:
            raise RuntimeError("installing the package: %s" % p.stderr[-500:])
        results += events("wrapper-mw", runs, deb)
        with open("/etc/default/haproxy", "a") as f:
            f.write("WRAPPER_MODE=-x /run/haproxy/admin.sock\n")
        sh("systemctl", "restart", "haproxy", timeout=60, check=True)
        results += events("wrapper-fg", runs, deb)
    except Exception as e:  # noqa: BLE001 - the host reports it
        errors.append("%s: %s" % (type(e).__name__, e))
    with open(os.path.join(OUT, "result.json.tmp"), "w") as f:
        json.dump({"results": results, "errors": errors, "versions": versions}, f)
    os.rename(os.path.join(OUT, "result.json.tmp"), os.path.join(OUT, "result.json"))
    sh("journalctl", "--sync")
    with open(os.path.join(OUT, "journal.txt"), "w") as f:
        f.write(sh("journalctl", "-b", "--no-pager", timeout=60).stdout)


if __name__ == "__main__":
    main()
